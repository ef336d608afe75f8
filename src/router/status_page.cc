#include "router/status_page.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvtier::router {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string Ratio(const std::optional<double>& r) {
  return r.has_value() ? absl::StrFormat("%.3f", *r) : "–";
}

std::string Fill(const std::optional<TierFill>& f) {
  if (!f.has_value()) return "–";
  if (f->capacity_bytes == 0) return "absent";
  return absl::StrFormat("%.1f%%", 100.0 * static_cast<double>(f->used_bytes) /
                                       static_cast<double>(f->capacity_bytes));
}

// The hit ratio over time: a polyline over [0, 1], time on the x axis.
std::string Chart(const std::vector<std::pair<double, double>>& history) {
  constexpr int kWidth = 720, kHeight = 160;
  std::string svg = absl::StrCat(
      "<svg id=\"hit-ratio-chart\" width=\"", kWidth, "\" height=\"", kHeight + 20,
      "\" viewBox=\"0 0 ", kWidth, " ", kHeight + 20,
      "\" role=\"img\" aria-label=\"cluster hit ratio over time\">"
      "<rect x=\"0\" y=\"0\" width=\"",
      kWidth, "\" height=\"", kHeight, "\" class=\"plot\"/>");
  for (double y : {0.25, 0.5, 0.75}) {
    absl::StrAppend(&svg, "<line x1=\"0\" x2=\"", kWidth, "\" y1=\"", kHeight * (1 - y), "\" y2=\"",
                    kHeight * (1 - y), "\" class=\"grid\"/>");
  }
  if (history.size() >= 2) {
    const double t0 = history.front().first, t1 = history.back().first;
    const double span = std::max(t1 - t0, 1.0);
    std::string points;
    for (const auto& [t, r] : history) {
      absl::StrAppend(&points, absl::StrFormat("%.1f,%.1f ", (t - t0) / span * kWidth,
                                               (1 - std::clamp(r, 0.0, 1.0)) * kHeight));
    }
    absl::StrAppend(&svg, "<polyline points=\"", points, "\" class=\"line\"/>");
    absl::StrAppend(&svg, "<text x=\"0\" y=\"", kHeight + 15, "\">",
                    absl::StrFormat("last %.0f s", span), "</text>");
  } else {
    absl::StrAppend(&svg, "<text x=\"10\" y=\"", kHeight / 2,
                    "\">no lookups seen yet</text>");
  }
  absl::StrAppend(&svg, "</svg>");
  return svg;
}

}  // namespace

std::string StatusPageHtml(const RouterStatus& status) {
  size_t healthy = 0;
  for (const NodeStatus& n : status.nodes) healthy += n.healthy ? 1 : 0;
  std::string html = absl::StrCat(
      "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta http-equiv=\"refresh\" content=\"5\"><title>kvtier-router</title><style>"
      "body{font-family:sans-serif;margin:2em;color:#222}"
      "table{border-collapse:collapse}td,th{padding:4px 12px;border-bottom:1px solid #ddd;"
      "text-align:right}td:first-child,th:first-child{text-align:left}"
      ".unhealthy{color:#b00;font-weight:bold}.plot{fill:#f7f7f7}.grid{stroke:#ddd}"
      ".line{fill:none;stroke:#1f6fb4;stroke-width:2}"
      "</style></head><body><h1>kvtier-router</h1><p id=\"summary\">Nodes: <span "
      "id=\"nodes-healthy\">",
      healthy, "</span> of <span id=\"nodes-total\">", status.nodes.size(),
      "</span> healthy. Imbalance <span id=\"imbalance\">",
      absl::StrFormat("%.3f", status.imbalance), "</span> (bound <span id=\"load-bound\">",
      absl::StrFormat("%.2f", status.load_bound),
      "</span>). Cluster hit ratio, last minute: <span id=\"hit-ratio\">",
      Ratio(status.hit_ratio),
      "</span>.</p><table id=\"nodes\"><tr><th>node</th><th>health</th><th>load (blocks)</th>"
      "<th>decisions</th><th>hit ratio (1 min)</th><th>host fill</th><th>NVMe fill</th></tr>");
  for (const NodeStatus& n : status.nodes) {
    absl::StrAppend(
        &html, "<tr data-node=\"", Escape(n.node), "\"><td class=\"node\">", Escape(n.node),
        "</td><td class=\"health", n.healthy ? "" : " unhealthy", "\">",
        n.healthy ? "healthy" : "ejected", "</td><td class=\"load\">",
        absl::StrFormat("%.1f", n.load), "</td><td class=\"decisions\">", n.decisions,
        "</td><td class=\"hit-ratio\">", Ratio(n.hit_ratio), "</td><td class=\"host-fill\">",
        Fill(n.host), "</td><td class=\"nvme-fill\">", Fill(n.nvme), "</td></tr>");
  }
  absl::StrAppend(&html, "</table><h2>Cluster hit ratio</h2>", Chart(status.history),
                  "<p>Metrics: <a href=\"/metrics\">/metrics</a></p></body></html>\n");
  return html;
}

}  // namespace kvtier::router
