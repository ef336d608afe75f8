#include "cli/flags.h"

#include "absl/strings/str_cat.h"

namespace kvtier::cli {

absl::StatusOr<ParsedFlags> ParseFlags(int argc, char** argv,
                                       const std::set<std::string>& with_value,
                                       const std::set<std::string>& switches) {
  ParsedFlags out;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      out.positional.push_back(a);
      continue;
    }
    const std::string name = a.substr(2);
    if (switches.contains(name)) {
      out.switches.insert(name);
    } else if (with_value.contains(name)) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(a, " needs a value"));
      out.values[name] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option '", a, "'"));
    }
  }
  return out;
}

}  // namespace kvtier::cli
