#pragma once
// `kvtier replay`: a Mooncake trace through N simulated nodes under several routing policies,
// with kvtier's router code (src/router/simulator.h): hit rates, balance, modeled TTFT.

namespace kvtier::cli {

int RunReplay(int argc, char** argv);

}  // namespace kvtier::cli
