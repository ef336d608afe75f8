#pragma once
// `kvtier demo`: replays the start of a Mooncake trace through a real tiered store with real KV
// block bytes, then restarts the store from its NVMe directory and verifies what it recovered.

namespace kvtier::cli {

int RunDemo(int argc, char** argv);

}  // namespace kvtier::cli
