#pragma once
// A small command-line parser for kvtier's subcommands: `--name value`, `--switch`, positionals.

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier::cli {

struct ParsedFlags {
  std::map<std::string, std::string> values;  // --name value
  std::set<std::string> switches;             // --name (no value)
  std::vector<std::string> positional;

  bool Has(const std::string& name) const { return switches.contains(name); }
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
  }
};

// `with_value` names the flags that take a value, `switches` those that do not; anything else
// starting with "--" is an error that names it.
absl::StatusOr<ParsedFlags> ParseFlags(int argc, char** argv,
                                       const std::set<std::string>& with_value,
                                       const std::set<std::string>& switches);

}  // namespace kvtier::cli
