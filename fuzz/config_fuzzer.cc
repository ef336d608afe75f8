// Feeds kvtierd's configuration parser (server/daemon_config.h, LoadDaemonConfig) a YAML file and
// command-line flags, through the entry point kvtierd's main() calls. The input up to its first
// NUL byte is the file (--config, read from an in-memory file); what follows is flags, one
// argument per NUL-separated piece. Whatever it accepts must be a config the store accepts.

#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "server/daemon_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  static fuzz::MemFile* file = new fuzz::MemFile();  // one for the whole run
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  file->Set(input.substr(0, nul));
  std::vector<std::string> args = {"--config", file->path()};
  if (nul != std::string_view::npos) {
    std::string_view rest = input.substr(nul + 1);
    while (true) {
      const size_t end = rest.find('\0');
      args.emplace_back(rest.substr(0, end));
      // A second --config would make the parser read a file the input names.
      if (args.back() == "--config") return 0;
      if (end == std::string_view::npos) break;
      rest.remove_prefix(end + 1);
    }
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  bool help = false;
  auto c = server::LoadDaemonConfig(static_cast<int>(argv.size()), argv.data(), &help);
  if (c.ok() && !help) {
    KVTIER_FUZZ_CHECK(c->store.Validate().ok(), std::string(c->store.Validate().message()));
    KVTIER_FUZZ_CHECK(c->max_message_bytes > 0 && c->max_message_bytes <= size_t{2047} << 20,
                      "max_message_mib in 1..2047");
  } else if (!c.ok()) {
    KVTIER_FUZZ_CHECK(c.status().code() == absl::StatusCode::kInvalidArgument,
                      std::string(c.status().message()));
  }
  return 0;
}
