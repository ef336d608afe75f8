#pragma once
// A throwaway certificate authority for TLS tests: `openssl` makes, in `dir`, ca.pem/ca.key and
// server and client certificates (server.pem/.key, client.pem/.key) signed by it, each valid for
// 127.0.0.1 and localhost for two days.

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

namespace kvtier::testing {

// False when openssl failed.
inline bool MakeTestCerts(const std::string& dir) {
  const std::string script =
      "(cd '" + dir +
      "' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      " -keyout ca.key -out ca.pem -days 2 -subj /CN=kvtier-test-ca"
      " && for who in server client; do"
      " openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      " -keyout $who.key -out $who.csr -subj /CN=$who"
      " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > $who.ext"
      " && openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
      " -out $who.pem -days 2 -extfile $who.ext || exit 1; done) > /dev/null 2>&1";
  return std::system(script.c_str()) == 0;
}

// A whole file as text ("" when it cannot be read).
inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace kvtier::testing
