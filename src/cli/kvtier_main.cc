// kvtier: command-line entry point. Subcommands live in their own files under src/cli/.
#include <cstdio>
#include <cstring>

#include "cli/demo.h"
#include "cli/gen_trace.h"
#include "cli/profile_heads.h"
#include "cli/remote.h"
#include "cli/replay.h"
#include "common/logging.h"
#include "common/process_tuning.h"
#include "common/version.h"

namespace {

constexpr char kUsage[] = R"(usage: kvtier <command> [options]

kvtier keeps the attention KV cache of LLM prompts in HBM, host RAM and NVMe so that requests
sharing a prefix skip its prefill.

commands:
  demo      replay a Mooncake trace through a tiered block store and restart it (the README's
            quick start); `kvtier demo --help` for its options
  replay    a Mooncake trace through simulated nodes under each routing policy (hit rates,
            balance, modeled TTFT); `kvtier replay --help`
  gen-trace trace variants (sessions, a shared first block, bursts, scaled time) for replay;
            `kvtier gen-trace --help`
  put, get, lookup, delete, stats
            talk to a kvtierd (`kvtier put --help` lists their options)
  keys      chained block keys of a token sequence
  profile-heads
            a head profile (recall heads for head-sparse attention) from recorded attention
            statistics; `kvtier profile-heads --help`

`kvtier <command> --help` explains each command; `kvtier --version` names this build.
)";

}  // namespace

int main(int argc, char** argv) {
  if (kvtier::AskedForVersion(argc, argv)) {
    std::puts(kvtier::VersionLine("kvtier").c_str());
    return 0;
  }
  // Like every kvtier binary: replay and the remote commands move megabyte blocks over gRPC.
  kvtier::TuneProcessForThroughput();
  (void)kvtier::InitLogging("info");
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "demo") == 0) return kvtier::cli::RunDemo(argc - 2, argv + 2);
  if (std::strcmp(argv[1], "replay") == 0) return kvtier::cli::RunReplay(argc - 2, argv + 2);
  if (std::strcmp(argv[1], "gen-trace") == 0) return kvtier::cli::RunGenTrace(argc - 2, argv + 2);
  if (std::strcmp(argv[1], "profile-heads") == 0) {
    return kvtier::cli::RunProfileHeads(argc - 2, argv + 2);
  }
  if (kvtier::cli::IsRemoteCommand(argv[1])) return kvtier::cli::RunRemote(argc - 1, argv + 1);
  std::fprintf(stderr, "kvtier: unknown command '%s'\n\n%s", argv[1], kUsage);
  return 2;
}
