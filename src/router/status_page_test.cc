#include "router/status_page.h"

#include <gtest/gtest.h>

namespace kvtier::router {
namespace {

RouterStatus Example() {
  RouterStatus s;
  s.nodes.push_back({.node = "10.0.0.1:7700",
                     .healthy = true,
                     .load = 12.25,
                     .decisions = 42,
                     .hit_ratio = 0.4321,
                     .host = TierFill{256, 1024},
                     .nvme = TierFill{0, 0}});
  s.nodes.push_back({.node = "<b>&\"odd\"", .healthy = false});
  s.imbalance = 1.0625;
  s.load_bound = 1.25;
  s.hit_ratio = 0.5;
  s.history = {{1000, 0.25}, {1001, 0.5}, {1003, 1.0}};
  return s;
}

TEST(StatusPage, CarriesEveryNumberWhereATestCanReadIt) {
  const std::string html = StatusPageHtml(Example());
  for (const char* want :
       {"<span id=\"nodes-healthy\">1</span>", "<span id=\"nodes-total\">2</span>",
        "<span id=\"imbalance\">1.062</span>", "<span id=\"load-bound\">1.25</span>",
        "<span id=\"hit-ratio\">0.500</span>", "<tr data-node=\"10.0.0.1:7700\">",
        "<td class=\"health\">healthy</td>", "<td class=\"load\">12.2</td>",
        "<td class=\"decisions\">42</td>", "<td class=\"hit-ratio\">0.432</td>",
        "<td class=\"host-fill\">25.0%</td>", "<td class=\"nvme-fill\">absent</td>",
        "<td class=\"health unhealthy\">ejected</td>", "<td class=\"hit-ratio\">–</td>",
        "<polyline points=\"0.0,120.0 240.0,80.0 720.0,0.0 \""}) {
    EXPECT_NE(html.find(want), std::string::npos) << want << "\n" << html;
  }
}

TEST(StatusPage, EscapesNamesAndLoadsNothingFromElsewhere) {
  const std::string html = StatusPageHtml(Example());
  EXPECT_NE(html.find("&lt;b&gt;&amp;&quot;odd&quot;"), std::string::npos);
  EXPECT_EQ(html.find("<b>"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("://"), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
}

TEST(StatusPage, SaysSoWhenThereIsNoHistoryYet) {
  RouterStatus s;
  const std::string html = StatusPageHtml(s);
  EXPECT_NE(html.find("no lookups seen yet"), std::string::npos);
  EXPECT_NE(html.find("<span id=\"hit-ratio\">–</span>"), std::string::npos);
}

}  // namespace
}  // namespace kvtier::router
