#pragma once
// `kvtier profile-heads`: a head profile (which heads are recall heads) from recorded attention
// statistics (src/gpu/head_profile.h).

namespace kvtier::cli {

int RunProfileHeads(int argc, char** argv);

}  // namespace kvtier::cli
