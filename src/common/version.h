#pragma once
// What this build is: the project's version and the git commit it was configured from.

#include <string>

namespace kvtier {

// "0.1.0".
const char* Version();
// The short commit hash the build was configured from, "+dirty" when the tree had changes, or
// "unknown" outside a git checkout.
const char* BuildCommit();
// "<program> <version> (commit <commit>)": what every binary prints for --version.
std::string VersionLine(const std::string& program);
// True when any of the arguments is --version, which every binary answers first.
bool AskedForVersion(int argc, char** argv);

}  // namespace kvtier
