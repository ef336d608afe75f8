#include "cli/profile_heads.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "cli/flags.h"
#include "gpu/head_profile.h"

namespace kvtier::cli {
namespace {

constexpr char kUsage[] = R"(usage: kvtier profile-heads --stats FILE [options]

Scores every KV head by the attention it paid to the needle tokens of retrieval probes (mean over
the probes of a kvtier.head_stats.v1 file, docs/head-profiles.md) and writes a head profile
(kvtier.head_profile.v1) in which the best-scoring heads are recall heads: they attend to the
whole prefix, the others to the first --sink and the last --window tokens only.

options:
  --stats FILE            recorded statistics (required)
  --recall-fraction F     share of all heads that become recall heads (default 0.15)
  --sink N                attention-sink tokens of local heads (default 4)
  --window N              recent tokens of local heads (default 64)
  --model NAME            model name written into the profile
  --out FILE              where to write the profile (default: standard output)
  --help                  this text
)";

int Usage(const std::string& error) {
  std::fprintf(stderr, "kvtier profile-heads: %s\n\n%s", error.c_str(), kUsage);
  return 2;
}

}  // namespace

int RunProfileHeads(int argc, char** argv) {
  if (argc > 0 && std::string(argv[0]) == "-h") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  auto flags = ParseFlags(argc, argv,
                          {"stats", "recall-fraction", "sink", "window", "model", "out"}, {"help"});
  if (!flags.ok()) return Usage(std::string(flags.status().message()));
  if (flags->Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!flags->positional.empty()) return Usage("unexpected '" + flags->positional[0] + "'");
  const std::string stats_path = flags->Get("stats"), out_path = flags->Get("out");
  gpu::HeadProfileFile file;
  file.model = flags->Get("model");
  double fraction = 0;
  int sink = 0, window = 0;
  if (!absl::SimpleAtod(flags->Get("recall-fraction", "0.15"), &fraction) ||
      !(fraction >= 0 && fraction <= 1)) {
    return Usage("--recall-fraction needs a number in [0, 1]");
  }
  if (!absl::SimpleAtoi(flags->Get("sink", "4"), &sink) || sink < 0) {
    return Usage("--sink needs a number >= 0");
  }
  if (!absl::SimpleAtoi(flags->Get("window", "64"), &window) || window < 0) {
    return Usage("--window needs a number >= 0");
  }
  if (stats_path.empty()) return Usage("--stats is required");
  std::ifstream in(stats_path);
  if (!in) {
    std::fprintf(stderr, "kvtier profile-heads: cannot read %s\n", stats_path.c_str());
    return 1;
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string error;
  auto scores = gpu::ScoreHeads(text.str(), &error);
  if (!scores) {
    std::fprintf(stderr, "kvtier profile-heads: %s: %s\n", stats_path.c_str(), error.c_str());
    return 1;
  }
  file.layers = static_cast<int>(scores->size());
  file.kv_heads = static_cast<int>((*scores)[0].size());
  file.recall_fraction = fraction;
  file.profile = gpu::SelectRecallHeads(*scores, fraction, sink, window);
  // How well the split separates the heads: the mean needle mass of each kind.
  double recall_sum = 0, local_sum = 0;
  int recall = 0;
  for (int l = 0; l < file.layers; ++l) {
    for (int h = 0; h < file.kv_heads; ++h) {
      const bool r = file.profile.IsRecall(l, h);
      (r ? recall_sum : local_sum) += (*scores)[l][h];
      recall += r;
    }
  }
  const int all = file.layers * file.kv_heads;
  std::fprintf(stderr,
               "%d of %d heads are recall heads; mean needle mass %.3f (recall) vs %.3f (local)\n",
               recall, all, recall ? recall_sum / recall : 0.0,
               all > recall ? local_sum / (all - recall) : 0.0);
  const std::string json = gpu::HeadProfileToJson(file);
  if (out_path.empty()) {
    std::fputs(json.c_str(), stdout);
    return 0;
  }
  std::ofstream out(out_path);
  out << json;
  out.close();
  if (!out) {
    std::fprintf(stderr, "kvtier profile-heads: cannot write %s\n", out_path.c_str());
    return 1;
  }
  return 0;
}

}  // namespace kvtier::cli
