#include "common/version.h"

#include <cstring>

namespace kvtier {

const char* Version() { return KVTIER_VERSION; }
const char* BuildCommit() { return KVTIER_COMMIT; }

std::string VersionLine(const std::string& program) {
  return program + " " + Version() + " (commit " + BuildCommit() + ")";
}

bool AskedForVersion(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--version") == 0) return true;
  }
  return false;
}

}  // namespace kvtier
