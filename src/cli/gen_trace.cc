#include "cli/gen_trace.h"

#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "cli/flags.h"
#include "router/trace_gen.h"

namespace kvtier::cli {
namespace {

constexpr char kUsage[] = R"(usage: kvtier gen-trace --out FILE [options]

Writes a Mooncake-format trace (JSONL: timestamp ms, input_length, output_length, hash_ids of
512-token blocks) for `kvtier replay --trace`. The same options and seed give the same file.

source (--kind):
  trace       an existing trace (--trace; default: the shared synthetic trace)
  sessions    multi-turn conversations: Zipf-popular system prompts of 2-30 blocks, sessions of
              1-10 turns, each turn resending the whole history plus 1-6 new blocks

then, in this order:
  --shared-first       put one block shared by every request in front of each request
  --burst K            requests between 40% and 50% of the trace arrive K times faster
  --time-scale F       multiply every timestamp by F (< 1: faster arrivals)

options:
  --kind KIND          trace or sessions (default: trace)
  --trace FILE         the source trace of --kind trace
  --seed N             sessions: random seed (default: 1)
  --sessions N         sessions: conversations (default: 2500)
  --duration S         sessions: seconds over which sessions start (default: 600)
  --system-prompts N   sessions: distinct system prompts (default: 40)
  --out FILE           where to write (required)
  --help               this text
)";

int Usage(const std::string& error) {
  std::fprintf(stderr, "kvtier gen-trace: %s\n\n%s", error.c_str(), kUsage);
  return 2;
}

}  // namespace

int RunGenTrace(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv,
                          {"kind", "trace", "seed", "sessions", "duration", "system-prompts",
                           "burst", "time-scale", "out"},
                          {"help", "shared-first"});
  if (!flags.ok()) return Usage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!flags->positional.empty()) return Usage("unexpected '" + flags->positional[0] + "'");
  const std::string out = flags->Get("out"), kind = flags->Get("kind", "trace");
  if (out.empty()) return Usage("--out is required");
  double burst = 1, scale = 1;
  if (!absl::SimpleAtod(flags->Get("burst", "1"), &burst) || !(burst >= 1)) {
    return Usage("--burst needs a factor >= 1");
  }
  if (!absl::SimpleAtod(flags->Get("time-scale", "1"), &scale) || !(scale > 0)) {
    return Usage("--time-scale needs a factor > 0");
  }
  std::vector<router::TraceRequest> trace;
  if (kind == "trace") {
    const std::string path = flags->Get(
        "trace", std::string(KVTIER_SOURCE_DIR) + "/../shared/data/mooncake/synthetic_trace.jsonl");
    auto loaded = router::LoadMooncakeTrace(path);
    if (!loaded.ok()) {
      std::fprintf(stderr, "kvtier gen-trace: %s\n", std::string(loaded.status().message()).c_str());
      return 1;
    }
    trace = *std::move(loaded);
  } else if (kind == "sessions") {
    router::SessionTraceOptions o;
    if (!absl::SimpleAtoi(flags->Get("seed", "1"), &o.seed)) return Usage("--seed needs a number");
    if (!absl::SimpleAtoi(flags->Get("sessions", "2500"), &o.sessions) || o.sessions == 0) {
      return Usage("--sessions needs a number > 0");
    }
    if (!absl::SimpleAtod(flags->Get("duration", "600"), &o.duration_s) || !(o.duration_s > 0)) {
      return Usage("--duration needs seconds > 0");
    }
    if (!absl::SimpleAtoi(flags->Get("system-prompts", "40"), &o.system_prompts) ||
        o.system_prompts == 0) {
      return Usage("--system-prompts needs a number > 0");
    }
    trace = router::GenerateSessions(o);
  } else {
    return Usage("--kind is trace or sessions, not '" + kind + "'");
  }
  if (flags->Has("shared-first")) router::AddSharedFirstBlock(&trace);
  router::AddBurst(&trace, burst);
  router::ScaleTime(&trace, scale);
  if (absl::Status s = router::WriteMooncakeTrace(out, trace); !s.ok()) {
    std::fprintf(stderr, "kvtier gen-trace: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("%zu requests written to %s\n", trace.size(), out.c_str());
  return 0;
}

}  // namespace kvtier::cli
