#include "gpu/head_profile.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

namespace kvtier::gpu {
namespace {

using nlohmann::json;

constexpr char kProfileFormat[] = "kvtier.head_profile.v1";
constexpr char kStatsFormat[] = "kvtier.head_stats.v1";

// Reads a positive integer field; false with *error set otherwise.
bool PositiveInt(const json& j, const char* field, int* out, std::string* error) {
  if (!j.contains(field) || !j[field].is_number_integer() || j[field].get<int64_t>() <= 0 ||
      j[field].get<int64_t>() > (1 << 20)) {
    *error = std::string(field) + ": must be a positive integer";
    return false;
  }
  *out = j[field].get<int>();
  return true;
}

std::optional<json> ParseObject(const std::string& text, const char* format, std::string* error) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    *error = "not a JSON object";
    return std::nullopt;
  }
  if (!j.contains("format") || j["format"] != format) {
    *error = std::string("format: must be \"") + format + "\"";
    return std::nullopt;
  }
  return j;
}

}  // namespace

std::optional<HeadProfileFile> ParseHeadProfile(const std::string& text, std::string* error) {
  auto j = ParseObject(text, kProfileFormat, error);
  if (!j) return std::nullopt;
  HeadProfileFile f;
  if (!PositiveInt(*j, "layers", &f.layers, error) ||
      !PositiveInt(*j, "kv_heads", &f.kv_heads, error)) {
    return std::nullopt;
  }
  if (j->contains("model")) {
    if (!(*j)["model"].is_string()) {
      *error = "model: must be a string";
      return std::nullopt;
    }
    f.model = (*j)["model"].get<std::string>();
  }
  for (const char* field : {"sink", "window"}) {
    if (!j->contains(field)) continue;  // the defaults
    const json& v = (*j)[field];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 30)) {
      *error = std::string(field) + ": must be an integer >= 0";
      return std::nullopt;
    }
    (std::string(field) == "sink" ? f.profile.sink : f.profile.window) = v.get<int>();
  }
  if (j->contains("recall_fraction")) {
    const json& v = (*j)["recall_fraction"];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 1) {
      *error = "recall_fraction: must be a number in [0, 1]";
      return std::nullopt;
    }
    f.recall_fraction = v.get<double>();
  }
  if (!j->contains("recall") || !(*j)["recall"].is_array() ||
      (*j)["recall"].size() != size_t(f.layers)) {
    *error = "recall: must be a list of " + std::to_string(f.layers) + " lists (one per layer)";
    return std::nullopt;
  }
  f.profile.recall.assign(f.layers, std::vector<bool>(f.kv_heads, false));
  for (int l = 0; l < f.layers; ++l) {
    const json& heads = (*j)["recall"][l];
    if (!heads.is_array()) {
      *error = "recall[" + std::to_string(l) + "]: must be a list of kv heads";
      return std::nullopt;
    }
    for (const json& h : heads) {
      if (!h.is_number_integer() || h.get<int64_t>() < 0 || h.get<int64_t>() >= f.kv_heads) {
        *error = "recall[" + std::to_string(l) + "]: kv heads must be integers in [0, " +
                 std::to_string(f.kv_heads) + ")";
        return std::nullopt;
      }
      f.profile.recall[l][h.get<int>()] = true;
    }
  }
  return f;
}

std::string HeadProfileToJson(const HeadProfileFile& f) {
  json recall = json::array();
  for (int l = 0; l < f.layers; ++l) {
    json heads = json::array();
    for (int h = 0; h < f.kv_heads; ++h) {
      if (f.profile.IsRecall(l, h)) heads.push_back(h);
    }
    recall.push_back(heads);
  }
  const json j = {{"format", kProfileFormat},
                  {"model", f.model},
                  {"layers", f.layers},
                  {"kv_heads", f.kv_heads},
                  {"sink", f.profile.sink},
                  {"window", f.profile.window},
                  {"recall_fraction", f.recall_fraction},
                  {"recall", recall}};
  return j.dump() + "\n";
}

std::optional<std::vector<std::vector<double>>> ScoreHeads(const std::string& text,
                                                           std::string* error) {
  auto j = ParseObject(text, kStatsFormat, error);
  if (!j) return std::nullopt;
  int layers = 0, kv_heads = 0;
  if (!PositiveInt(*j, "layers", &layers, error) ||
      !PositiveInt(*j, "kv_heads", &kv_heads, error)) {
    return std::nullopt;
  }
  if (!j->contains("probes") || !(*j)["probes"].is_array() || (*j)["probes"].empty()) {
    *error = "probes: must be a non-empty list";
    return std::nullopt;
  }
  std::vector<std::vector<double>> sum(layers, std::vector<double>(kv_heads, 0.0));
  const json& probes = (*j)["probes"];
  for (size_t p = 0; p < probes.size(); ++p) {
    const std::string where = "probes[" + std::to_string(p) + "].needle_mass";
    const json* mass = probes[p].is_object() && probes[p].contains("needle_mass")
                           ? &probes[p]["needle_mass"]
                           : nullptr;
    if (mass == nullptr || !mass->is_array() || mass->size() != size_t(layers)) {
      *error = where + ": must be " + std::to_string(layers) + " rows (one per layer)";
      return std::nullopt;
    }
    for (int l = 0; l < layers; ++l) {
      const json& row = (*mass)[l];
      if (!row.is_array() || row.size() != size_t(kv_heads)) {
        *error = where + "[" + std::to_string(l) + "]: must be " + std::to_string(kv_heads) +
                 " values (one per kv head)";
        return std::nullopt;
      }
      for (int h = 0; h < kv_heads; ++h) {
        if (!row[h].is_number() || !(row[h].get<double>() >= 0 && row[h].get<double>() <= 1)) {
          *error = where + "[" + std::to_string(l) + "]: values must be numbers in [0, 1]";
          return std::nullopt;
        }
        sum[l][h] += row[h].get<double>();
      }
    }
  }
  for (auto& row : sum) {
    for (double& v : row) v /= static_cast<double>(probes.size());
  }
  return sum;
}

HeadProfile SelectRecallHeads(const std::vector<std::vector<double>>& scores, double fraction,
                              int sink, int window) {
  HeadProfile p;
  p.sink = sink;
  p.window = window;
  const size_t layers = scores.size(), heads = scores[0].size();
  p.recall.assign(layers, std::vector<bool>(heads, false));
  std::vector<size_t> order(layers * heads);
  std::iota(order.begin(), order.end(), 0);
  // Best first; equal scores keep index order (lower layer, then lower head).
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return scores[a / heads][a % heads] > scores[b / heads][b % heads];
  });
  const size_t keep = static_cast<size_t>(std::ceil(fraction * double(order.size()) - 1e-9));
  for (size_t i = 0; i < keep && i < order.size(); ++i) {
    p.recall[order[i] / heads][order[i] % heads] = true;
  }
  return p;
}

std::vector<double> AttentionMass(const PagedKv& kv, const DecodeRequest& req,
                                  std::span<const int> tokens) {
  DecodeRequest dense = req;
  dense.profile = nullptr;
  // lse over one token is its score: the needle's share is sum exp(score_t - lse_all).
  const DecodeResult all = ReferenceDecode(kv, dense);
  std::vector<int> distinct(tokens.begin(), tokens.end());
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  std::vector<double> mass(req.q_heads, 0.0);
  for (int t : distinct) {
    if (t < 0 || t >= kv.context_tokens) continue;
    const DecodeResult one = ReferencePartialDecode(kv, dense, t, t + 1);
    for (int h = 0; h < req.q_heads; ++h) {
      mass[h] += std::exp(double(one.lse[h]) - double(all.lse[h]));
    }
  }
  for (double& m : mass) m = std::min(m, 1.0);  // a share, whatever the float rounding of lse
  return mass;
}

}  // namespace kvtier::gpu
