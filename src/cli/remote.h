#pragma once
// `kvtier put|get|lookup|delete|stats|keys`: the daemon's operations from a shell.

namespace kvtier::cli {

// argv[0] is the command name.
int RunRemote(int argc, char** argv);
bool IsRemoteCommand(const char* name);

}  // namespace kvtier::cli
