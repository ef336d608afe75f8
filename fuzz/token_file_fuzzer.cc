// Feeds kvtierd's token-file parser (server/auth.h, TenantAuth::LoadFile) a file (read from an
// in-memory file, through the entry point kvtierd calls). Whatever it accepts must name at least
// one tenant; whatever it refuses must be INVALID_ARGUMENT.

#include <string>

#include "fuzz/fuzz_util.h"
#include "server/auth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  static fuzz::MemFile* file = new fuzz::MemFile();  // one for the whole run
  file->Set(std::string_view(reinterpret_cast<const char*>(data), size));
  auto auth = server::TenantAuth::LoadFile(file->path());
  if (auth.ok()) {
    KVTIER_FUZZ_CHECK(auth->tenants() > 0, "a token file names a tenant");
  } else {
    KVTIER_FUZZ_CHECK(auth.status().code() == absl::StatusCode::kInvalidArgument,
                      std::string(auth.status().message()));
  }
  return 0;
}
