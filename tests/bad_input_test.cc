// The bad-input table: hostile input of every kind, sent to real kvtierd processes over the wire.
// Each row names what it sends and the answer the contract (proto/kvtier/v1/cache.proto) gives
// it: a gRPC status code, or for what is not a gRPC call (raw TCP bytes, a daemon that must refuse
// to start) the outcome. After every row the daemon must still serve (a put and a get on a new
// connection) and the blocks stored before the first row must come back byte for byte.
//
// The rows of one daemon run in one process against that one daemon, so what a row leaves behind
// (a leaked hold, a pinned block, a wedged thread) shows in the rows after it. The whole table is
// printed as markdown at the end of the run.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "daemon_rpc.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "testing/daemon_process.h"
#include "testing/http_get.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::Block;
using ::kvtier::testing::Chain;
using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::kDaemon;
using ::kvtier::testing::KeysOf;
using ::kvtier::testing::OpenPut;
using ::kvtier::testing::PutMessage;
using ::kvtier::testing::RawCall;
using ::kvtier::testing::Sample;
using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1 << 20;
// The plain daemon's limits, small so that the rows past them are cheap.
constexpr uint64_t kMaxMessage = 4 * kMiB;  // --max-message-mib 4
constexpr uint64_t kMaxBlock = 2 * kMiB;    // --max-block-mib 2
constexpr int kMaxKeys = 1024;              // --max-keys-per-request
constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();
constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

const std::string kClient = std::string(KVTIER_BINARY_DIR) + "/tests/bad_input_client";

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "CODE_" + std::to_string(i);
}

// ---------------------------------------------------------------------------------------------
// The table that is printed at the end.

struct Row {
  std::string name, sent, expected, observed, verdict;
};

std::vector<Row>& Table() {
  static std::vector<Row> rows;
  return rows;
}

std::string Cell(std::string s) {
  for (size_t at = 0; (at = s.find('|', at)) != std::string::npos; at += 2) s.replace(at, 1, "\\|");
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

class PrintTable : public ::testing::Environment {
 public:
  void TearDown() override {
    if (Table().empty()) return;
    std::printf("\n| case | what was sent | expected | observed |\n|---|---|---|---|\n");
    for (const Row& r : Table()) {
      std::printf("| %s | %s | %s | %s%s |\n", Cell(r.name).c_str(), Cell(r.sent).c_str(),
                  Cell(r.expected).c_str(), Cell(r.observed).c_str(),
                  r.verdict.empty() ? "" : Cell(" (" + r.verdict + ")").c_str());
    }
    std::printf("\n%zu rows\n", Table().size());
  }
};
[[maybe_unused]] ::testing::Environment* const kPrintTable =
    ::testing::AddGlobalTestEnvironment(new PrintTable);

// Records a row and checks it: a mismatch fails, unless the row names a known defect, when the
// row is reported as skipped with it (GTEST_SKIP in the caller).
bool Check(const std::string& name, const std::string& sent, const std::string& expected,
           const std::string& observed, const char* known_defect = nullptr) {
  Row row{name, sent, expected, observed, ""};
  const bool match = observed == expected;
  if (known_defect != nullptr) {
    row.verdict = match ? "its known defect is gone: drop the mark" : "skipped: known defect";
  }
  Table().push_back(row);
  if (match || known_defect != nullptr) return match;
  ADD_FAILURE() << name << ": sent " << sent << "; expected " << expected << ", observed "
                << observed;
  return false;
}

// ---------------------------------------------------------------------------------------------
// A daemon under test and what the rows share.

struct Daemon {
  TempDir dir;
  std::unique_ptr<DaemonProcess> process;
  std::string address;
  std::string metrics;  // HOST:PORT of /metrics, or empty
  std::string tenant = "keeper";
  std::string token;  // the keeper tenant's bearer token, with auth on
  std::unique_ptr<v1::CacheService::Stub> stub;
  std::vector<Block> keepers;  // stored before the first row (Keepers())
  uint64_t next_seed = 100'000;

  uint64_t Seed() { return next_seed++; }
};

// A context with a deadline and, where `token` is set, its bearer token.
std::unique_ptr<grpc::ClientContext> Ctx(
    const std::string& token, std::chrono::milliseconds deadline = std::chrono::seconds(10)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + deadline);
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  return ctx;
}

std::unique_ptr<v1::CacheService::Stub> NewConnection(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
  return v1::CacheService::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// Sends `msgs` as one Put stream.
grpc::Status PutStream(v1::CacheService::Stub& stub, const std::string& token,
                       const std::vector<v1::PutRequest>& msgs, v1::PutResponse* res = nullptr) {
  auto ctx = Ctx(token);
  v1::PutResponse local;
  auto writer = stub.Put(ctx.get(), res != nullptr ? res : &local);
  for (const v1::PutRequest& m : msgs) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status PutBlocks(v1::CacheService::Stub& stub, const std::string& token,
                       const std::string& tenant, const std::vector<Block>& blocks,
                       bool durable = false) {
  std::vector<v1::PutRequest> msgs;
  for (const Block& b : blocks) {
    v1::PutRequest& m = msgs.emplace_back();
    m.set_tenant(tenant);
    m.mutable_header()->set_key(b.key.ByteString());
    if (!b.parent.IsZero()) m.mutable_header()->set_parent(b.parent.ByteString());
    m.mutable_header()->set_size(b.data.size());
    m.mutable_header()->set_checksum(Checksum(b.data.data(), b.data.size()));
    m.mutable_header()->set_durable(durable);
    m.set_data(b.data.data(), b.data.size());
  }
  return PutStream(stub, token, msgs);
}

// Reads a Get's answer to the end: one entry a key, the payload or nullopt when not found.
template <typename Reader>
std::vector<std::optional<std::string>> ReadBlocks(Reader* reader, size_t max_blocks = 1 << 20) {
  std::vector<std::optional<std::string>> out;
  v1::GetResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_header()) {
      if (out.size() == max_blocks) break;
      out.emplace_back();
      if (msg.found()) out.back().emplace();
    }
    if (!out.empty() && out.back().has_value()) out.back()->append(msg.data());
  }
  return out;
}

grpc::Status Get(v1::CacheService::Stub& stub, const std::string& token, const v1::GetRequest& req,
                 std::vector<std::optional<std::string>>* got = nullptr) {
  auto ctx = Ctx(token);
  auto reader = stub.Get(ctx.get(), req);
  auto blocks = ReadBlocks(reader.get());
  if (got != nullptr) *got = std::move(blocks);
  return reader->Finish();
}

v1::GetRequest GetOf(const std::string& tenant, const std::vector<BlockKey>& keys) {
  v1::GetRequest req;
  req.set_tenant(tenant);
  for (const BlockKey& k : keys) req.add_keys(k.ByteString());
  return req;
}

std::string AsString(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

// "" when a Get of `blocks` of `tenant` gives back every one byte for byte, else what is wrong.
std::string BlocksIntact(v1::CacheService::Stub& stub, const std::string& token,
                         const std::string& tenant, const std::vector<Block>& blocks) {
  std::vector<std::optional<std::string>> got;
  grpc::Status st = Get(stub, token, GetOf(tenant, KeysOf(blocks)), &got);
  if (!st.ok()) return "get: " + CodeName(st.error_code()) + " " + st.error_message();
  if (got.size() != blocks.size()) return "get: " + std::to_string(got.size()) + " answers";
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (!got[i].has_value()) return "block " + std::to_string(i) + " missing";
    if (*got[i] != AsString(blocks[i].data)) return "block " + std::to_string(i) + " changed";
  }
  return "";
}

// The daemon still serves a new client (a put and a get on a connection of their own), and the
// keepers are intact. Fails the current test otherwise.
void ExpectServesAndIntact(Daemon& d, const std::string& after) {
  auto fresh = NewConnection(d.address);
  const uint64_t seed = d.Seed();
  // The size of keepers[0]: a size class of its own per probe would take a slab each.
  const auto probe = Chain(seed, 1, 4096);
  grpc::Status st = PutBlocks(*fresh, d.token, d.tenant, probe);
  EXPECT_TRUE(st.ok()) << "after " << after << ": a new put: " << CodeName(st.error_code()) << " "
                       << st.error_message();
  EXPECT_EQ(BlocksIntact(*fresh, d.token, d.tenant, probe), "") << "after " << after;
  EXPECT_EQ(BlocksIntact(*fresh, d.token, d.tenant, d.keepers), "")
      << "after " << after << ": the blocks stored at the start";
  auto ctx = Ctx(d.token);
  v1::LookupRequest lookup;
  lookup.set_tenant(d.tenant);
  for (size_t i = 0; i + 1 < d.keepers.size(); ++i) lookup.add_keys(d.keepers[i].key.ByteString());
  v1::LookupResponse res;
  st = fresh->Lookup(ctx.get(), lookup, &res);
  EXPECT_TRUE(st.ok()) << "after " << after << ": lookup: " << st.error_message();
  EXPECT_EQ(res.matched(), d.keepers.size() - 1) << "after " << after << ": the keepers' chain";
}

// The keepers: a chain of four blocks from 4 KiB to 2 MiB, and a block of its own.
std::vector<Block> Keepers() {
  std::vector<Block> out;
  const size_t sizes[] = {4096, 64 << 10, 1 << 20, 2 << 20};
  for (size_t i = 0; i < 4; ++i) {
    out.push_back(
        {TestKey(10 + i), i == 0 ? BlockKey{} : TestKey(10 + i - 1), TestBlock(10 + i, sizes[i])});
  }
  out.push_back({TestKey(20), BlockKey{}, TestBlock(20, 48 << 10)});
  return out;
}

// Which keepers are put durable.
enum class Durable { kNone, kLast, kAll };

// Stores the keepers; an empty d.keepers on failure.
void StoreKeepers(Daemon& d, Durable durable) {
  d.keepers = Keepers();
  const std::vector<Block> chain(d.keepers.begin(), d.keepers.end() - 1);
  if (!PutBlocks(*d.stub, d.token, d.tenant, chain, durable == Durable::kAll).ok() ||
      !PutBlocks(*d.stub, d.token, d.tenant, {d.keepers.back()}, durable != Durable::kNone).ok() ||
      !BlocksIntact(*d.stub, d.token, d.tenant, d.keepers).empty()) {
    d.keepers.clear();
  }
}

// Starts kvtierd (testing::StartDaemon, UCX off, then `flags`) in d, on d.dir; d.address is empty
// if it did not start.
void Start(Daemon& d, std::vector<std::string> flags) {
  flags.insert(flags.begin(), {"--ucx-listen", "off"});  // no shared memory to leave behind
  d.process = testing::StartDaemon(d.dir.Sub("data"), flags);
  d.address = d.process->address();
  d.metrics = d.process->AddressOf("kvtierd metrics");
  if (d.address.empty()) return;
  d.stub = testing::Connect(*d.process);
}

// Bytes clients reported reading over UCX.
const char kUcxServedBytes[] = "kvtier_served_bytes_total{path=\"ucx\",tier=\"host\"}";

double Metric(const Daemon& d, const std::string& name) {
  return Sample(testing::HttpGet(d.metrics, "/metrics"), name);
}

// Polls `name` until it equals `value` (at most 10 s); returns the last value read.
double AwaitMetric(const Daemon& d, const std::string& name, double value) {
  double now = Metric(d, name);
  for (const auto until = Clock::now() + std::chrono::seconds(10);
       now != value && Clock::now() < until;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    now = Metric(d, name);
  }
  return now;
}

// ---------------------------------------------------------------------------------------------
// Building what the rows send.

std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

// A length-delimited field, as protobuf writes it.
std::string LenField(int field, const std::string& bytes) {
  return Varint(static_cast<uint64_t>(field) << 3 | 2) + Varint(bytes.size()) + bytes;
}

std::string VarintField(int field, uint64_t v) {
  return Varint(static_cast<uint64_t>(field) << 3) + Varint(v);
}

// A KvLayout written field by field, so that any value (an unknown enum, a negative one, 2^32-1)
// goes on the wire as given. Enum values are int64 so that -1 is written as protobuf writes it.
struct RawLayout {
  int64_t kind = 1, dtype = 1;
  uint64_t layers = 2, kv_heads = 2, head_dim = 16, block_tokens = 16, latent_rank = 0,
           rope_dim = 0;
  std::string Bytes() const {
    std::string out = VarintField(1, static_cast<uint64_t>(kind)) +
                      VarintField(2, static_cast<uint64_t>(dtype)) + VarintField(3, layers) +
                      VarintField(4, kv_heads) + VarintField(5, head_dim) +
                      VarintField(6, block_tokens);
    if (latent_rank != 0) out += VarintField(7, latent_rank);
    if (rope_dim != 0) out += VarintField(8, rope_dim);
    return out;
  }
};
constexpr size_t kSmallGqaBytes = 4096;  // RawLayout{}: 2 layers x 2 x 2 heads x 16 x 16 x fp16

v1::PutRequest PutOf(const std::string& tenant, const std::string& key, uint64_t size,
                     const std::string& data) {
  v1::PutRequest m;
  m.set_tenant(tenant);
  m.mutable_header()->set_key(key);
  m.mutable_header()->set_size(size);
  m.set_data(data);
  return m;
}

std::string Bytes(uint64_t seed, size_t n) { return AsString(TestBlock(seed, n)); }

std::string Garbage(size_t n) {
  std::string g(n, '\0');
  for (size_t i = 0; i < n; ++i) g[i] = static_cast<char>(i * 131 + 7);
  return g;
}

// ---------------------------------------------------------------------------------------------
// Rows: what each sends, and the outcome it observed.

// A row's observed outcome: a status code name (or an outcome for what is not a call), with what
// else went wrong appended, so that a row passes only when both are as expected.
std::string Outcome(const grpc::Status& st, const std::string& also_wrong = "") {
  return CodeName(st.error_code()) + (also_wrong.empty() ? "" : " but " + also_wrong);
}

struct Case {
  std::string name;
  std::string sent;
  std::string expected;
  std::function<std::string(Daemon&)> run;
  // Set where today's answer is known to be wrong and the fix is not this suite's: a mismatch
  // then skips the row, naming the defect.
  const char* known_defect = nullptr;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string RawCode(const Daemon& d, const std::string& method,
                    const std::vector<std::string>& messages) {
  return CodeName(
      RawCall(d.address, "/kvtier.v1.CacheService/" + method, messages).status.error_code());
}

// A Put stream of typed messages.
Case PutCase(std::string name, std::string sent, std::string expected,
             std::function<std::vector<v1::PutRequest>(Daemon&)> msgs) {
  return {std::move(name), std::move(sent), std::move(expected),
          [msgs](Daemon& d) { return Outcome(PutStream(*d.stub, d.token, msgs(d))); }};
}

// A Put stream of raw messages.
Case RawPutCase(std::string name, std::string sent, std::string expected,
                std::function<std::vector<std::string>(Daemon&)> msgs) {
  return {std::move(name), std::move(sent), std::move(expected),
          [msgs](Daemon& d) { return RawCode(d, "Put", msgs(d)); }};
}

// A Put whose first message declares `layout` (raw) before one block of `size` bytes.
Case LayoutCase(std::string name, std::string sent, RawLayout layout, size_t size = kSmallGqaBytes,
                std::string expected = "INVALID_ARGUMENT") {
  return RawPutCase(
      std::move(name), std::move(sent), std::move(expected), [layout, size](Daemon& d) {
        const std::string put =
            PutOf("t", TestKey(d.Seed()).ByteString(), size, Bytes(1, size)).SerializeAsString();
        return std::vector<std::string>{put + LenField(4, layout.Bytes())};
      });
}

Case GetCase(std::string name, std::string sent, std::string expected,
             std::function<v1::GetRequest(Daemon&)> req) {
  return {std::move(name), std::move(sent), std::move(expected),
          [req](Daemon& d) { return Outcome(Get(*d.stub, d.token, req(d))); }};
}

template <typename Request, typename Response, typename Call>
Case UnaryCase(std::string name, std::string sent, std::string expected, Call call,
               std::function<Request(Daemon&)> req) {
  return {std::move(name), std::move(sent), std::move(expected), [call, req](Daemon& d) {
            auto ctx = Ctx(d.token);
            Response res;
            return Outcome(((*d.stub).*call)(ctx.get(), req(d), &res));
          }};
}

Case LookupCase(std::string name, std::string sent, std::string expected,
                std::function<v1::LookupRequest(Daemon&)> req) {
  return UnaryCase<v1::LookupRequest, v1::LookupResponse>(
      std::move(name), std::move(sent), std::move(expected), &v1::CacheService::Stub::Lookup,
      std::move(req));
}

Case LeaseCase(std::string name, std::string sent, std::string expected,
               std::function<v1::LeaseRequest(Daemon&)> req) {
  return UnaryCase<v1::LeaseRequest, v1::LeaseResponse>(
      std::move(name), std::move(sent), std::move(expected), &v1::CacheService::Stub::Lease,
      std::move(req));
}

// Stores one block of `size` bytes for tenant "t" and returns its key.
BlockKey StoreOne(Daemon& d, size_t size) {
  const auto b = Chain(d.Seed(), 1, size);
  EXPECT_TRUE(PutBlocks(*d.stub, d.token, "t", b).ok());
  return b[0].key;
}

// Leases `key` for `tenant`; 0 on failure.
uint64_t LeaseOf(Daemon& d, const std::string& tenant, const BlockKey& key,
                 const std::string& token) {
  auto ctx = Ctx(token);
  v1::LeaseRequest req;
  req.set_tenant(tenant);
  req.add_keys(key.ByteString());
  v1::LeaseResponse res;
  grpc::Status st = d.stub->Lease(ctx.get(), req, &res);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return st.ok() ? res.lease_id() : 0;
}

grpc::Status Release(Daemon& d, const std::string& tenant, uint64_t id, const std::string& token,
                     uint64_t bytes_read = 0) {
  auto ctx = Ctx(token);
  v1::ReleaseRequest req;
  req.set_tenant(tenant);
  req.set_lease_id(id);
  req.set_bytes_read(bytes_read);
  v1::ReleaseResponse res;
  return d.stub->Release(ctx.get(), req, &res);
}

// --- raw TCP ---

int ConnectTcp(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(host_port.substr(colon + 1))));
  if (inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &addr.sin_addr) != 1) return -1;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `bytes` on a new connection and reads until the peer closes it (at most 10 s):
// "connection closed", or "left open".
std::string SendAndAwaitClose(const std::string& host_port, const std::string& bytes) {
  const int fd = ConnectTcp(host_port);
  if (fd < 0) return "connect failed";
  if (write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    close(fd);
    return "connection closed";  // closed while we wrote
  }
  std::string result = "left open";
  for (const auto until = Clock::now() + std::chrono::seconds(10); Clock::now() < until;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
      result = "connection closed";
      break;
    }
  }
  close(fd);
  return result;
}

// Opens `n` connections to /metrics that each send half a request, then scrapes it (waiting up to
// 15 s): "scraped" within 2 s, "scraped after N s", or "no scrape".
std::string ScrapeBesideHalfOpen(const Daemon& d, int n) {
  const std::string half = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    const int fd = ConnectTcp(d.metrics);
    if (fd < 0) continue;
    fds.push_back(fd);
    if (write(fd, half.data(), half.size()) != static_cast<ssize_t>(half.size())) break;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // each reaches a thread
  const auto start = Clock::now();
  std::string response;
  const int fd = ConnectTcp(d.metrics);
  const std::string get = "GET /metrics HTTP/1.0\r\n\r\n";
  if (fd >= 0 && write(fd, get.data(), get.size()) == static_cast<ssize_t>(get.size())) {
    for (const auto until = start + std::chrono::seconds(15); Clock::now() < until;) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[16384];
      const ssize_t got = read(fd, buf, sizeof(buf));
      if (got <= 0) break;
      response.append(buf, static_cast<size_t>(got));
    }
  }
  if (fd >= 0) close(fd);
  const double s = std::chrono::duration<double>(Clock::now() - start).count();
  for (int open : fds) close(open);
  if (static_cast<int>(fds.size()) != n) return "only " + std::to_string(fds.size()) + " opened";
  if (response.find("kvtier_puts_total") == std::string::npos) return "no scrape";
  if (s < 2) return "scraped";
  return "scraped after " + std::to_string(static_cast<int>(s + 0.5)) + " s";
}

// --- processes ---

const char* const kCodes[] = {
    "OK",        "CANCELLED",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED",     "PERMISSION_DENIED",  "OTHER"};

// kvtier_rpc_requests_total of `rpc` by code.
std::vector<double> RpcCounts(const Daemon& d, const std::string& rpc) {
  const std::string text = testing::HttpGet(d.metrics, "/metrics");
  std::vector<double> out;
  for (const char* code : kCodes) {
    const double v = Sample(
        text, std::string("kvtier_rpc_requests_total{code=\"") + code + "\",rpc=\"" + rpc + "\"}");
    out.push_back(v < 0 ? 0 : v);
  }
  return out;
}

// Waits (at most 10 s) for the daemon to count one more `rpc` than in `before`; returns the code
// it was counted under, or "not counted".
std::string AwaitCountedCode(const Daemon& d, const std::string& rpc,
                             const std::vector<double>& before) {
  for (const auto until = Clock::now() + std::chrono::seconds(10); Clock::now() < until;) {
    const std::vector<double> now = RpcCounts(d, rpc);
    for (size_t i = 0; i < now.size(); ++i) {
      if (now[i] > before[i]) return kCodes[i];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return "not counted";
}

// Starts bad_input_client in `mode`, waits until the daemon holds `hold` bytes for it, kills it,
// and returns the code the daemon counted the call under, with what else was wrong.
std::string KillClientMidCall(Daemon& d, const std::string& mode, const std::string& rpc,
                              uint64_t seed, double hold, int repeat = 1) {
  const std::vector<double> before = RpcCounts(d, rpc);
  DaemonProcess child(kClient, {d.address, mode, "t", std::to_string(seed), std::to_string(repeat)},
                      std::chrono::seconds(10), "mid-call on ");
  if (child.address().empty()) return "the client never got mid-call";
  if (AwaitMetric(d, "kvtier_inflight_bytes", hold) != hold) return "the daemon never held it";
  kill(child.pid(), SIGKILL);
  const int status = child.Stop();
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) return "the client was not killed";
  const std::string code = AwaitCountedCode(d, rpc, before);
  const double left = AwaitMetric(d, "kvtier_inflight_bytes", 0);
  if (left != 0) return code + " but " + std::to_string(left) + " bytes still held";
  return code;
}

// A 2 MiB block of tenant t read by a client killed mid-read (`mode` get or session, one request
// naming it 64 times): the code the daemon counted, and whether the block is still intact.
std::string KillReaderMidGet(Daemon& d, const std::string& mode) {
  const uint64_t seed = d.Seed();
  const auto b = Chain(seed, 1, kMaxBlock);
  if (!PutBlocks(*d.stub, d.token, "t", b).ok()) return "put failed";
  const std::string code = KillClientMidCall(d, mode, "Get", seed, kMaxBlock, 64);
  const std::string intact = BlocksIntact(*d.stub, d.token, "t", b);
  return intact.empty() ? code : code + " but " + intact;
}

// Runs kvtierd with `args` (its stderr joined to stdout) and expects it to refuse to start:
// "exit N, names WHAT" when it exits with N and its message names `what`.
std::string RefusedStart(std::vector<std::string> args, const std::string& what) {
  std::vector<std::string> sh = {"-c", "exec \"$0\" \"$@\" 2>&1", kDaemon};
  sh.insert(sh.end(), args.begin(), args.end());
  DaemonProcess p("/bin/sh", sh, std::chrono::seconds(10));
  if (!p.address().empty()) return "it listened on " + p.address();
  const int status = p.Stop(std::chrono::seconds(10));
  if (!WIFEXITED(status)) return "no exit (status " + std::to_string(status) + ")";
  const std::string exit = "exit " + std::to_string(WEXITSTATUS(status));
  if (p.output().find(what) == std::string::npos) {
    return exit + ", does not name " + what + ": " + p.output();
  }
  return exit + ", names " + what;
}

// ---------------------------------------------------------------------------------------------
// The plain daemon's rows: no auth, an NVMe tier, small limits.

std::vector<Case> PlainCases() {
  const std::string k16 = TestKey(1).ByteString();
  std::vector<Case> c;

  // --- malformed keys and parents ---
  c.push_back(
      PutCase("put_key_15_bytes", "Put: header.key of 15 bytes", "INVALID_ARGUMENT",
              [](Daemon&) { return std::vector{PutOf("t", std::string(15, 'k'), 4, "abcd")}; }));
  c.push_back(
      PutCase("put_key_17_bytes", "Put: header.key of 17 bytes", "INVALID_ARGUMENT",
              [](Daemon&) { return std::vector{PutOf("t", std::string(17, 'k'), 4, "abcd")}; }));
  c.push_back(PutCase("put_key_missing", "Put: a header with no key", "INVALID_ARGUMENT",
                      [](Daemon&) { return std::vector{PutOf("t", "", 4, "abcd")}; }));
  c.push_back(
      PutCase("put_key_all_zero", "Put: header.key of 16 zero bytes (reserved)", "INVALID_ARGUMENT",
              [](Daemon&) { return std::vector{PutOf("t", std::string(16, '\0'), 4, "abcd")}; }));
  c.push_back(PutCase("put_parent_15_bytes", "Put: header.parent of 15 bytes", "INVALID_ARGUMENT",
                      [](Daemon& d) {
                        auto m = PutOf("t", TestKey(d.Seed()).ByteString(), 4, "abcd");
                        m.mutable_header()->set_parent(std::string(15, 'p'));
                        return std::vector{m};
                      }));
  c.push_back(PutCase("put_parent_is_key", "Put: header.parent equal to header.key",
                      "INVALID_ARGUMENT", [](Daemon& d) {
                        const std::string key = TestKey(d.Seed()).ByteString();
                        auto m = PutOf("t", key, 4, "abcd");
                        m.mutable_header()->set_parent(key);
                        return std::vector{m};
                      }));
  c.push_back(
      GetCase("get_key_15_bytes", "Get: keys = [15 bytes]", "INVALID_ARGUMENT", [](Daemon&) {
        v1::GetRequest r;
        r.set_tenant("t");
        r.add_keys(std::string(15, 'k'));
        return r;
      }));
  c.push_back(GetCase("get_packed_keys_17_bytes", "Get: packed_keys of 17 bytes",
                      "INVALID_ARGUMENT", [k16](Daemon&) {
                        v1::GetRequest r;
                        r.set_tenant("t");
                        r.set_packed_keys(k16 + "x");
                        return r;
                      }));
  c.push_back(GetCase("get_keys_and_packed_keys", "Get: both keys and packed_keys",
                      "INVALID_ARGUMENT", [k16](Daemon&) {
                        v1::GetRequest r;
                        r.set_tenant("t");
                        r.add_keys(k16);
                        r.set_packed_keys(k16);
                        return r;
                      }));
  c.push_back(GetCase("get_zero_key", "Get: packed_keys = 16 zero bytes (no block has it)", "OK",
                      [](Daemon&) {
                        v1::GetRequest r;
                        r.set_tenant("t");
                        r.set_packed_keys(std::string(16, '\0'));
                        return r;
                      }));
  c.push_back(LookupCase("lookup_key_17_bytes", "Lookup: keys = [16-byte key, 17 bytes]",
                         "INVALID_ARGUMENT", [k16](Daemon&) {
                           v1::LookupRequest r;
                           r.set_tenant("t");
                           r.add_keys(k16);
                           r.add_keys(k16 + "x");
                           return r;
                         }));
  c.push_back(
      LeaseCase("lease_key_empty", "Lease: keys = [empty]", "INVALID_ARGUMENT", [](Daemon&) {
        v1::LeaseRequest r;
        r.set_tenant("t");
        r.add_keys("");
        return r;
      }));
  c.push_back(LeaseCase("lease_no_keys", "Lease: no keys at all", "INVALID_ARGUMENT", [](Daemon&) {
    v1::LeaseRequest r;
    r.set_tenant("t");
    return r;
  }));
  c.push_back(LeaseCase("lease_key_twice", "Lease: one stored key named twice", "INVALID_ARGUMENT",
                        [](Daemon& d) {
                          const BlockKey k = StoreOne(d, 4096);
                          v1::LeaseRequest r;
                          r.set_tenant("t");
                          r.add_keys(k.ByteString());
                          r.add_keys(k.ByteString());
                          return r;
                        }));
  c.push_back(
      LeaseCase("lease_missing_key", "Lease: a key never stored", "NOT_FOUND", [](Daemon& d) {
        v1::LeaseRequest r;
        r.set_tenant("t");
        r.add_keys(TestKey(d.Seed()).ByteString());
        return r;
      }));
  c.push_back(UnaryCase<v1::DeleteRequest, v1::DeleteResponse>(
      "delete_packed_keys_15_bytes", "Delete: packed_keys of 15 bytes", "INVALID_ARGUMENT",
      &v1::CacheService::Stub::Delete, std::function<v1::DeleteRequest(Daemon&)>([](Daemon&) {
        v1::DeleteRequest r;
        r.set_tenant("t");
        r.set_packed_keys(std::string(15, 'k'));
        return r;
      })));

  // --- tenants ---
  c.push_back(
      LookupCase("lookup_no_tenant", "Lookup: no tenant", "INVALID_ARGUMENT", [k16](Daemon&) {
        v1::LookupRequest r;
        r.add_keys(k16);
        return r;
      }));
  c.push_back(PutCase("put_tenant_257_bytes", "Put: a tenant of 257 bytes (limit 256)",
                      "INVALID_ARGUMENT", [](Daemon& d) {
                        return std::vector{PutOf(std::string(257, 'a'),
                                                 TestKey(d.Seed()).ByteString(), 4, "abcd")};
                      }));
  c.push_back(PutCase(
      "put_no_tenant", "Put: first message without a tenant", "INVALID_ARGUMENT",
      [](Daemon& d) { return std::vector{PutOf("", TestKey(d.Seed()).ByteString(), 4, "abcd")}; }));
  c.push_back(PutCase("put_tenant_changes", "Put: block 1 as tenant t, block 2 as tenant u",
                      "INVALID_ARGUMENT", [](Daemon& d) {
                        return std::vector{PutOf("t", TestKey(d.Seed()).ByteString(), 4, "abcd"),
                                           PutOf("u", TestKey(d.Seed()).ByteString(), 4, "abcd")};
                      }));
  c.push_back(RawPutCase("put_tenant_not_utf8", "Put (raw): block 1, then tenant \"t\\xff\\xfe\"",
                         "INVALID_ARGUMENT", [](Daemon& d) {
                           auto m = PutOf("", TestKey(d.Seed()).ByteString(), 4, "abcd");
                           return std::vector<std::string>{
                               PutMessage("t", Chain(d.Seed(), 1, 4096)[0]),
                               LenField(1, "t\xff\xfe") + m.SerializeAsString()};
                         }));
  c.push_back(
      {"get_tenant_not_utf8", "Get (raw): tenant \"t\\xff\", one key", "INVALID_ARGUMENT",
       [k16](Daemon& d) { return RawCode(d, "Get", {LenField(1, "t\xff") + LenField(2, k16)}); }});
  c.push_back(
      {"lookup_tenant_not_utf8", "Lookup (raw): tenant \"t\\xff\", one key", "INVALID_ARGUMENT",
       [k16](Daemon& d) { return RawCode(d, "Lookup", {LenField(1, "t\xff") + LenField(2, k16)}); }});
  c.push_back(UnaryCase<v1::DataPlaneRequest, v1::DataPlaneResponse>(
      "data_plane_no_tenant", "DataPlane: no tenant", "INVALID_ARGUMENT",
      &v1::CacheService::Stub::DataPlane, std::function<v1::DataPlaneRequest(Daemon&)>([](Daemon&) {
        return v1::DataPlaneRequest();
      })));

  // --- sizes off by one ---
  c.push_back(PutCase(
      "put_size_0", "Put: header.size 0, no data", "INVALID_ARGUMENT",
      [](Daemon& d) { return std::vector{PutOf("t", TestKey(d.Seed()).ByteString(), 0, "")}; }));
  c.push_back(PutCase("put_size_max_block_plus_1",
                      "Put: header.size = --max-block-mib 2 MiB + 1, and that many bytes",
                      "INVALID_ARGUMENT", [](Daemon& d) {
                        return std::vector{PutOf("t", TestKey(d.Seed()).ByteString(), kMaxBlock + 1,
                                                 Bytes(2, kMaxBlock + 1))};
                      }));
  c.push_back({"put_size_max_block", "Put: header.size = 2 MiB exactly (the limit), then Get it",
               "OK", [](Daemon& d) {
                 const auto b = Chain(d.Seed(), 1, kMaxBlock);
                 grpc::Status st = PutBlocks(*d.stub, d.token, "t", b);
                 return Outcome(st, st.ok() ? BlocksIntact(*d.stub, d.token, "t", b) : "");
               }});
  c.push_back(PutCase("put_data_one_byte_over", "Put: header.size 4096, 4097 bytes of data",
                      "INVALID_ARGUMENT", [](Daemon& d) {
                        return std::vector{
                            PutOf("t", TestKey(d.Seed()).ByteString(), 4096, Bytes(3, 4097))};
                      }));
  c.push_back(
      {"put_data_one_byte_short_then_end", "Put: header.size 4096, 4095 bytes, end of stream",
       "INVALID_ARGUMENT", [](Daemon& d) {
         const BlockKey key = TestKey(d.Seed());
         grpc::Status st =
             PutStream(*d.stub, d.token, {PutOf("t", key.ByteString(), 4096, Bytes(3, 4095))});
         std::vector<std::optional<std::string>> got;
         (void)Get(*d.stub, d.token, GetOf("t", {key}), &got);
         const bool visible = got.size() == 1 && got[0].has_value();
         return Outcome(st, visible ? "the partial block is visible" : "");
       }});
  c.push_back(PutCase("put_data_one_byte_short_then_header",
                      "Put: header.size 4096, 4095 bytes, then the next block's header",
                      "INVALID_ARGUMENT", [](Daemon& d) {
                        return std::vector{
                            PutOf("t", TestKey(d.Seed()).ByteString(), 4096, Bytes(3, 4095)),
                            PutOf("t", TestKey(d.Seed()).ByteString(), 4, "abcd")};
                      }));
  c.push_back(PutCase(
      "put_size_2e64_minus_1", "Put: header.size 2^64-1", "RESOURCE_EXHAUSTED", [](Daemon& d) {
        return std::vector{PutOf("t", TestKey(d.Seed()).ByteString(), kU64Max, "abcd")};
      }));
  c.push_back({"put_size_wraps_inflight",
               "Put: header.size 2^64 - G + 1 while G = 1 MiB of another put is in flight on the "
               "same connection",
               "RESOURCE_EXHAUSTED", [](Daemon& d) {
                 const Block held = Chain(d.Seed(), 1, 1 << 20)[0];
                 OpenPut open(*d.stub, held);
                 const double g = AwaitMetric(d, "kvtier_inflight_bytes", 1 << 20);
                 if (g != (1 << 20))
                   return "the open put was never held (" + std::to_string(g) + ")";
                 grpc::Status st = PutStream(
                     *d.stub, d.token,
                     {PutOf("t", TestKey(d.Seed()).ByteString(), kU64Max - (1 << 20) + 2, "abcd")});
                 const double after = Metric(d, "kvtier_inflight_bytes");
                 grpc::Status finished = open.Finish(held);
                 std::string wrong;
                 if (after != (1 << 20)) wrong = "the gauge went to " + std::to_string(after);
                 if (!finished.ok()) wrong += " the held put failed: " + finished.error_message();
                 if (AwaitMetric(d, "kvtier_inflight_bytes", 0) != 0) wrong += " bytes left held";
                 return Outcome(st, wrong);
               }});
  c.push_back(LayoutCase("put_size_layout_plus_1",
                         "Put: layout GQA fp16 2x2x16x16 (4096 bytes), a block of 4097",
                         RawLayout{}, kSmallGqaBytes + 1));
  c.push_back(LayoutCase("put_size_layout_minus_1",
                         "Put: layout GQA fp16 2x2x16x16 (4096 bytes), a block of 4095",
                         RawLayout{}, kSmallGqaBytes - 1));
  c.push_back(LayoutCase("put_size_layout_exact",
                         "Put: layout GQA fp16 2x2x16x16, a 4096-byte block", RawLayout{},
                         kSmallGqaBytes, "OK"));
  c.push_back({"put_checksum_wrong", "Put: header.checksum that is not the payload's", "DATA_LOSS",
               [](Daemon& d) {
                 auto m = PutOf("t", TestKey(d.Seed()).ByteString(), 4, "abcd");
                 m.mutable_header()->set_checksum(1);
                 return Outcome(PutStream(*d.stub, d.token, {m}));
               }});

  // --- layout fields at 0 and 2^32-1, unknown enums ---
  c.push_back(LayoutCase("layout_layers_0", "Put: layout.layers 0", RawLayout{.layers = 0}));
  c.push_back(LayoutCase("layout_block_tokens_0", "Put: layout.block_tokens 0",
                         RawLayout{.block_tokens = 0}));
  c.push_back(
      LayoutCase("layout_kv_heads_0", "Put: GQA layout.kv_heads 0", RawLayout{.kv_heads = 0}));
  c.push_back(
      LayoutCase("layout_head_dim_0", "Put: GQA layout.head_dim 0", RawLayout{.head_dim = 0}));
  c.push_back(LayoutCase("layout_latent_rank_0", "Put: MLA layout.latent_rank 0",
                         RawLayout{.kind = 2, .dtype = 2, .rope_dim = 8}));
  c.push_back(LayoutCase("layout_layers_u32_max", "Put: layout.layers 2^32-1",
                         RawLayout{.layers = kU32Max}));
  c.push_back(LayoutCase(
      "layout_gqa_all_u32_max",
      "Put: GQA layout, layers = kv_heads = head_dim = block_tokens = 2^32-1",
      RawLayout{
          .layers = kU32Max, .kv_heads = kU32Max, .head_dim = kU32Max, .block_tokens = kU32Max}));
  c.push_back(
      LayoutCase("layout_mla_u32_max", "Put: MLA layout, latent_rank = rope_dim = 2^32-1",
                 RawLayout{.kind = 2, .dtype = 2, .latent_rank = kU32Max, .rope_dim = kU32Max}));
  c.push_back(LayoutCase("layout_kind_unspecified", "Put: layout.kind 0 (UNSPECIFIED)",
                         RawLayout{.kind = 0}));
  c.push_back(LayoutCase("layout_kind_unknown", "Put: layout.kind 7 (no such enum value)",
                         RawLayout{.kind = 7}));
  c.push_back(LayoutCase("layout_dtype_unknown", "Put: layout.dtype 99 (no such enum value)",
                         RawLayout{.dtype = 99}));
  c.push_back(LayoutCase("layout_dtype_negative", "Put: layout.dtype -1 (a 10-byte varint)",
                         RawLayout{.dtype = -1}));
  c.push_back({"put_unknown_field", "Put (raw): a block with an unknown field 99 appended", "OK",
               [](Daemon& d) {
                 const auto b = Chain(d.Seed(), 1, 4096);
                 const std::string code =
                     RawCode(d, "Put", {PutMessage("t", b[0]) + VarintField(99, 1)});
                 return code + (code == "OK" && BlocksIntact(*d.stub, d.token, "t", b) != ""
                                    ? " but not stored"
                                    : "");
               }});

  // --- truncated and out-of-order streams, malformed messages ---
  c.push_back(PutCase("put_data_before_header", "Put: data with no header before it",
                      "INVALID_ARGUMENT", [](Daemon&) {
                        v1::PutRequest m;
                        m.set_tenant("t");
                        m.set_data("xyz");
                        return std::vector{m};
                      }));
  c.push_back(PutCase("put_header_then_end", "Put: a 1 MiB block's header, no data, end",
                      "INVALID_ARGUMENT", [](Daemon& d) {
                        return std::vector{PutOf("t", TestKey(d.Seed()).ByteString(), 1 << 20, "")};
                      }));
  c.push_back({"put_empty_stream", "Put: no message at all, then end", "OK", [](Daemon& d) {
                 v1::PutResponse res;
                 grpc::Status st = PutStream(*d.stub, d.token, {}, &res);
                 return Outcome(st, res.stored() + res.present() != 0 ? "it counted blocks" : "");
               }});
  c.push_back(RawPutCase("put_truncated_message", "Put (raw): a 4 KiB block's message cut in half",
                         "INVALID_ARGUMENT", [](Daemon& d) {
                           const std::string m = PutMessage("t", Chain(d.Seed(), 1, 4096)[0]);
                           return std::vector<std::string>{m.substr(0, m.size() / 2)};
                         }));
  c.push_back({"put_garbage_between_blocks", "Put (raw): [block 1, 1000 bytes of garbage, block 2]",
               "INVALID_ARGUMENT", [](Daemon& d) {
                 const auto chain = Chain(d.Seed(), 2, 4096);
                 d.Seed();
                 const std::string code =
                     RawCode(d, "Put",
                             {PutMessage("t", chain[0]), Garbage(1000), PutMessage("t", chain[1])});
                 std::vector<std::optional<std::string>> got;
                 (void)Get(*d.stub, d.token, GetOf("t", KeysOf(chain)), &got);
                 std::string wrong;
                 if (got.size() != 2 || !got[0].has_value()) wrong = "block 1 was not kept";
                 if (got.size() == 2 && got[1].has_value()) wrong += " block 2 was stored";
                 return code + (wrong.empty() ? "" : " but " + wrong);
               }});
  c.push_back(RawPutCase("put_header_wrong_wire_type",
                         "Put (raw): tenant, then field 2 (header) as a varint, then data",
                         "INVALID_ARGUMENT", [](Daemon&) {
                           return std::vector<std::string>{LenField(1, "t") + VarintField(2, 5) +
                                                           LenField(3, "abcd")};
                         }));
  c.push_back(
      {"get_session_garbage", "GetSession (raw): a valid request, then 1000 bytes of garbage",
       "INVALID_ARGUMENT", [k16](Daemon& d) {
         return RawCode(d, "GetSession", {LenField(1, "t") + LenField(2, k16), Garbage(1000)});
       }});
  c.push_back(
      {"lease_session_garbage",
       "LeaseSession (raw): a valid lease request, then 1000 bytes of garbage", "INVALID_ARGUMENT",
       [k16](Daemon& d) {
         return RawCode(d, "LeaseSession",
                        {LenField(1, LenField(1, "t") + LenField(2, k16)), Garbage(1000)});
       }});
  c.push_back({"get_garbage", "Get (raw): 1000 bytes of garbage as the request", "INVALID_ARGUMENT",
               [](Daemon& d) { return RawCode(d, "Get", {Garbage(1000)}); }});
  c.push_back({"get_no_request", "Get (raw): the stream closed with no request", "INVALID_ARGUMENT",
               [](Daemon& d) { return RawCode(d, "Get", {}); }});
  c.push_back({"lookup_garbage", "Lookup (raw): 1000 bytes of garbage as the request",
               "INVALID_ARGUMENT", [](Daemon& d) { return RawCode(d, "Lookup", {Garbage(1000)}); }});
  c.push_back({"lookup_no_request", "Lookup (raw): the stream closed with no request",
               "INVALID_ARGUMENT", [](Daemon& d) { return RawCode(d, "Lookup", {}); }});
  for (const auto& [rpc, row] : std::vector<std::pair<std::string, std::string>>{
           {"Lease", "lease_garbage"},
           {"Release", "release_garbage"},
           {"Delete", "delete_garbage"},
           {"Stats", "stats_garbage"},
           {"DataPlane", "data_plane_garbage"},
           {"WatchBlocks", "watch_blocks_garbage"}}) {
    c.push_back({row, rpc + " (raw): 1000 bytes of garbage as the request", "INVALID_ARGUMENT",
                 [rpc = rpc](Daemon& d) { return RawCode(d, rpc, {Garbage(1000)}); }});
  }
  c.push_back({"unknown_method", "/kvtier.v1.CacheService/Nope (raw), an empty message",
               "UNIMPLEMENTED", [](Daemon& d) { return RawCode(d, "Nope", {""}); }});
  c.push_back({"unknown_service", "/kvtier.v9.CacheService/Get (raw), an empty message",
               "UNIMPLEMENTED", [](Daemon& d) {
                 return CodeName(
                     RawCall(d.address, "/kvtier.v9.CacheService/Get", {""}).status.error_code());
               }});

  // --- oversized messages and limits ---
  c.push_back(PutCase("put_message_over_max",
                      "Put: one message of 4 MiB + 1 KiB of data (--max-message-mib 4)",
                      "RESOURCE_EXHAUSTED", [](Daemon& d) {
                        return std::vector{PutOf("t", TestKey(d.Seed()).ByteString(), kMaxBlock,
                                                 std::string(kMaxMessage + 1024, 'x'))};
                      }));
  c.push_back(LookupCase("lookup_message_over_max", "Lookup: 4 MiB + 16 bytes of packed_keys",
                         "RESOURCE_EXHAUSTED", [](Daemon&) {
                           v1::LookupRequest r;
                           r.set_tenant("t");
                           r.set_packed_keys(std::string(kMaxMessage + 16, 'k'));
                           return r;
                         }));
  c.push_back(LookupCase("lookup_keys_over_limit",
                         "Lookup: 1025 keys (--max-keys-per-request 1024)", "INVALID_ARGUMENT",
                         [](Daemon&) {
                           v1::LookupRequest r;
                           r.set_tenant("t");
                           for (int i = 0; i <= kMaxKeys; ++i) r.add_keys(TestKey(i).ByteString());
                           return r;
                         }));
  c.push_back(LeaseCase("lease_ttl_u32_max", "Lease: ttl_ms 2^32-1 (max 300000)",
                        "INVALID_ARGUMENT", [](Daemon& d) {
                          v1::LeaseRequest r;
                          r.set_tenant("t");
                          r.add_keys(StoreOne(d, 4096).ByteString());
                          r.set_ttl_ms(static_cast<uint32_t>(kU32Max));
                          return r;
                        }));
  c.push_back(LeaseCase("lease_over_leased_bytes", "Lease: a 2 MiB block (--max-leased-mib 1)",
                        "RESOURCE_EXHAUSTED", [](Daemon& d) {
                          v1::LeaseRequest r;
                          r.set_tenant("t");
                          r.add_keys(StoreOne(d, kMaxBlock).ByteString());
                          return r;
                        }));

  // --- leases and releases ---
  c.push_back({"release_no_lease_with_bytes_read",
               "Release: a lease id never issued, bytes_read 2^60", "NOT_FOUND", [](Daemon& d) {
                 const double before = Metric(d, kUcxServedBytes);
                 grpc::Status st =
                     Release(d, "t", 0x5eed5eed5eed5eedULL, d.token, uint64_t{1} << 60);
                 const double after = Metric(d, kUcxServedBytes);
                 return Outcome(st, after != before ? "UCX served bytes rose to " +
                                                          std::to_string(after)
                                                    : "");
               }});
  c.push_back({"release_lease_id_0", "Release: lease_id 0", "NOT_FOUND",
               [](Daemon& d) { return Outcome(Release(d, "t", 0, d.token)); }});
  c.push_back({"release_twice", "Release: the same lease twice (the second answer)", "NOT_FOUND",
               [](Daemon& d) {
                 const uint64_t id = LeaseOf(d, "t", StoreOne(d, 4096), d.token);
                 grpc::Status first = Release(d, "t", id, d.token);
                 return Outcome(Release(d, "t", id, d.token),
                                first.ok() ? "" : "the first release failed");
               }});
  c.push_back({"release_other_tenants_lease",
               "Release: tenant u names tenant t's live lease (no auth)", "NOT_FOUND",
               [](Daemon& d) {
                 const uint64_t id = LeaseOf(d, "t", StoreOne(d, 4096), d.token);
                 grpc::Status st = Release(d, "u", id, d.token);
                 return Outcome(st, Release(d, "t", id, d.token).ok() ? "" : "t lost its lease");
               }});
  c.push_back({"release_addresses_mismatch",
               "Release: packed_keys of 2 keys with 1 address and 1 generation", "INVALID_ARGUMENT",
               [k16](Daemon& d) {
                 auto ctx = Ctx(d.token);
                 v1::ReleaseRequest req;
                 req.set_tenant("t");
                 req.set_lease_id(1);
                 req.set_packed_keys(k16 + k16);
                 req.add_addresses(0);
                 req.add_generations(0);
                 v1::ReleaseResponse res;
                 return Outcome(d.stub->Release(ctx.get(), req, &res));
               }});
  c.push_back({"delete_leased_block", "Delete: a block under a live lease", "FAILED_PRECONDITION",
               [](Daemon& d) {
                 const BlockKey k = StoreOne(d, 4096);
                 const uint64_t id = LeaseOf(d, "t", k, d.token);
                 auto ctx = Ctx(d.token);
                 v1::DeleteRequest req;
                 req.set_tenant("t");
                 req.add_keys(k.ByteString());
                 v1::DeleteResponse res;
                 grpc::Status st = d.stub->Delete(ctx.get(), req, &res);
                 return Outcome(st, Release(d, "t", id, d.token).ok() ? "" : "release failed");
               }});

  // --- raw TCP on the gRPC and metrics ports ---
  c.push_back({"tcp_garbage", "TCP: 4 KiB of garbage on the gRPC port", "connection closed",
               [](Daemon& d) { return SendAndAwaitClose(d.address, Garbage(4096)); }});
  c.push_back({"tcp_http1_get", "TCP: an HTTP/1.1 GET / on the gRPC port", "connection closed",
               [](Daemon& d) {
                 return SendAndAwaitClose(d.address,
                                          "GET / HTTP/1.1\r\nHost: kvtier\r\nConnection: "
                                          "keep-alive\r\n\r\n");
               }});
  c.push_back({"tcp_http2_preface_then_garbage",
               "TCP: the HTTP/2 preface, then 1000 bytes of garbage frames", "connection closed",
               [](Daemon& d) {
                 return SendAndAwaitClose(
                     d.address, std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + Garbage(1000));
               }});
  c.push_back({"tcp_half_open_grpc",
               "TCP: 32 connections that send half the HTTP/2 preface and wait; meanwhile a put "
               "and get on a new connection",
               "OK", [](Daemon& d) {
                 std::vector<int> fds;
                 for (int i = 0; i < 32; ++i) {
                   const int fd = ConnectTcp(d.address);
                   if (fd >= 0 && write(fd, "PRI * HTTP/2.0\r\n", 16) == 16) fds.push_back(fd);
                 }
                 const auto start = Clock::now();
                 auto fresh = NewConnection(d.address);
                 const auto b = Chain(d.Seed(), 1, 4096);
                 grpc::Status st = PutBlocks(*fresh, d.token, "t", b);
                 const std::string intact = BlocksIntact(*fresh, d.token, "t", b);
                 const double s = std::chrono::duration<double>(Clock::now() - start).count();
                 for (int fd : fds) close(fd);
                 std::string wrong = intact;
                 if (fds.size() != 32) wrong += " only " + std::to_string(fds.size()) + " opened";
                 if (s > 2) wrong += " it took " + std::to_string(s) + " s";
                 return Outcome(st, wrong);
               }});
  c.push_back({"metrics_half_open_4",
               "HTTP: 4 connections to /metrics that send half a request and wait; meanwhile a "
               "scrape",
               "scraped", [](Daemon& d) { return ScrapeBesideHalfOpen(d, 4); }});
  c.push_back({"metrics_half_open_200",
               "HTTP: 200 connections to /metrics that send half a request and wait; meanwhile a "
               "scrape",
               "scraped", [](Daemon& d) { return ScrapeBesideHalfOpen(d, 200); }});
  c.push_back({"metrics_garbage", "TCP: 4 KiB of garbage on the metrics port, then a scrape",
               "scraped", [](Daemon& d) {
                 (void)SendAndAwaitClose(d.metrics, Garbage(4096));
                 return testing::HttpGet(d.metrics, "/metrics").find("kvtier_puts_total") !=
                                std::string::npos
                            ? "scraped"
                            : "no scrape";
               }});

  // --- clients killed mid-call (the daemon's own count of the call) ---
  c.push_back({"client_killed_mid_put",
               "a child process: Put of a 1 MiB block, 256 KiB sent, then SIGKILL",
               "INVALID_ARGUMENT", [](Daemon& d) {
                 const uint64_t seed = d.Seed();
                 std::string code = KillClientMidCall(d, "put", "Put", seed, 1 << 20);
                 std::vector<std::optional<std::string>> got;
                 (void)Get(*d.stub, d.token, GetOf("t", {TestKey(seed)}), &got);
                 if (got.size() != 1 || got[0].has_value()) code += " but the block is visible";
                 return code;
               }});
  c.push_back({"client_killed_mid_get",
               "a child process: Get of one 2 MiB block named 64 times, one message read, then "
               "SIGKILL",
               "CANCELLED", [](Daemon& d) { return KillReaderMidGet(d, "get"); }});
  c.push_back({"client_killed_mid_get_session",
               "a child process: GetSession, a request naming one 2 MiB block 64 times, one "
               "message read, then SIGKILL",
               "CANCELLED", [](Daemon& d) { return KillReaderMidGet(d, "session"); }});

  // --- settings a daemon must refuse at start (beside the running one) ---
  c.push_back({"start_listen_port_in_use", "kvtierd --listen on the running daemon's address",
               "exit 1, names the address", [](Daemon& d) {
                 const std::string got =
                     RefusedStart({"--listen", d.address, "--no-nvme", "--host-mib", "16",
                                   "--metrics-listen", "", "--ucx-listen", "off"},
                                  d.address);
                 return got == "exit 1, names " + d.address ? "exit 1, names the address" : got;
               }});
  c.push_back({"start_metrics_port_in_use",
               "kvtierd --metrics-listen on the running daemon's metrics address",
               "exit 1, names the address", [](Daemon& d) {
                 const std::string got =
                     RefusedStart({"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "16",
                                   "--metrics-listen", d.metrics, "--ucx-listen", "off"},
                                  d.metrics);
                 return got == "exit 1, names " + d.metrics ? "exit 1, names the address" : got;
               }});
  for (const char* mib : {"0", "2048", "18446744073709551616"}) {
    c.push_back(
        {std::string("start_max_message_mib_") + (std::string(mib).size() > 4 ? "2e64" : mib),
         std::string("kvtierd --max-message-mib ") + mib, "exit 2, names --max-message-mib",
         [mib](Daemon&) {
           return RefusedStart(
               {"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "16", "--metrics-listen", "",
                "--ucx-listen", "off", "--max-message-mib", mib},
               "--max-message-mib");
         }});
  }

  // --- limits on one request and on one tenant ---
  c.push_back({"get_keys_over_limit", "Get: 65,537 keys (limits.max_keys_per_get 65,536)",
               "INVALID_ARGUMENT", [](Daemon& d) {
                 v1::GetRequest r;
                 r.set_tenant("t");
                 std::string packed;
                 for (int i = 0; i <= 65'536; ++i) packed += TestKey(7'000'000 + i).ByteString();
                 r.set_packed_keys(packed);
                 auto ctx = Ctx(d.token);
                 auto reader = d.stub->Get(ctx.get(), r);
                 v1::GetResponse msg;
                 while (reader->Read(&msg)) {
                 }
                 const grpc::Status st = reader->Finish();
                 return Outcome(st, st.error_message().find("max_keys_per_get") == std::string::npos
                                        ? "not for the Get limit: " + st.error_message()
                                        : "");
               }});
  c.push_back({"put_over_tenant_inflight_share",
               "Put: tenant hog holds 8 stalled 2 MiB puts (its 16 MiB share), then a 9th",
               "RESOURCE_EXHAUSTED", [](Daemon& d) {
                 std::vector<std::unique_ptr<OpenPut>> held;
                 for (const Block& b : Chain(d.Seed() * 1000, 8, kMaxBlock)) {
                   held.push_back(std::make_unique<OpenPut>(*d.stub, b, "hog", 1));
                 }
                 const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
                 while (Metric(d, "kvtier_tenant_inflight_bytes{tenant=\"hog\"}") != 16 * kMiB &&
                        std::chrono::steady_clock::now() < deadline) {
                   std::this_thread::sleep_for(std::chrono::milliseconds(10));
                 }
                 const grpc::Status st =
                     PutBlocks(*d.stub, d.token, "hog", Chain(d.Seed(), 1, kMaxBlock));
                 const grpc::Status other =
                     PutBlocks(*d.stub, d.token, "t", Chain(d.Seed(), 1, kMaxBlock));
                 for (auto& p : held) p->ctx.TryCancel();
                 return Outcome(st, other.ok() ? "" : "another tenant's put failed too");
               }});
  c.push_back({"put_stream_stalls", "Put: a 2 MiB block's header and 1 byte, then nothing (idle 2 s)",
               "CANCELLED", [](Daemon& d) {
                 OpenPut stalled(*d.stub, Chain(d.Seed(), 1, kMaxBlock)[0], "t", 1);
                 const auto start = std::chrono::steady_clock::now();
                 const grpc::Status st = stalled.writer->Finish();  // no WritesDone: it waits
                 const double s =
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                 return Outcome(st, s > 5 ? "cancelled only after " + std::to_string(s) + " s" : "");
               }});

  return c;
}

// Runs one row against `d`, then checks that `d` still serves with its keepers intact.
void RunRow(Daemon& d, const Case& row) {
  const std::string observed = row.run(d);
  const bool match = Check(row.name, row.sent, row.expected, observed, row.known_defect);
  ExpectServesAndIntact(d, row.name);
  if (!match && row.known_defect != nullptr) {
    GTEST_SKIP() << "known defect: " << row.known_defect << " (expected " << row.expected
                 << ", observed " << observed << ")";
  }
}

std::string RowName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

// Rows against one daemon, started before the first row and stopped after the last: it must
// then exit 0.
class DaemonRows : public ::testing::TestWithParam<Case> {
 protected:
  static void Stop(Daemon*& d) {
    if (d->process != nullptr && !d->address.empty()) {
      const int status = d->process->Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "kvtierd after the table: status " << status;
    }
    delete d;
    d = nullptr;
  }
  void Run(Daemon& d) {
    ASSERT_FALSE(d.address.empty()) << "kvtierd did not start";
    ASSERT_FALSE(d.keepers.empty()) << "the keepers were not stored";
    RunRow(d, GetParam());
  }
};

class BadInput : public DaemonRows {
 protected:
  static void SetUpTestSuite() {
    d_ = new Daemon;
    Start(*d_, {"--max-message-mib", "4", "--max-block-mib", "2", "--max-keys-per-request",
                std::to_string(kMaxKeys), "--max-leased-mib", "1", "--stream-idle-timeout-s", "2"});
    if (!d_->address.empty()) StoreKeepers(*d_, Durable::kLast);
  }
  static void TearDownTestSuite() { Stop(d_); }
  static Daemon* d_;
};
Daemon* BadInput::d_ = nullptr;

TEST_P(BadInput, AnswersAsTheContractSaysAndKeepsServing) { Run(*d_); }

INSTANTIATE_TEST_SUITE_P(Table, BadInput, ::testing::ValuesIn(PlainCases()), RowName);

// ---------------------------------------------------------------------------------------------
// With auth on: two tenants, each with a token (and no NVMe tier, so no durable puts).

constexpr char kAliceToken[] = "alice-secret-token-0001";
constexpr char kBobToken[] = "bob-secret-token-00000002";
constexpr char kRouterToken[] = "router-secret-token-0003";  // role: cluster

// The code of a Lookup of one key for `tenant` with `authorization` metadata ("" for none).
std::string LookupWith(Daemon& d, const std::string& tenant, const std::string& authorization) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  v1::LookupRequest req;
  req.set_tenant(tenant);
  req.add_keys(TestKey(10).ByteString());
  v1::LookupResponse res;
  return CodeName(d.stub->Lookup(&ctx, req, &res).error_code());
}

std::vector<Case> AuthCases() {
  std::vector<Case> c;
  c.push_back({"auth_no_token", "Lookup as alice with no authorization metadata", "UNAUTHENTICATED",
               [](Daemon& d) { return LookupWith(d, "alice", ""); }});
  c.push_back({"auth_wrong_token", "Lookup as alice with a token one character off",
               "UNAUTHENTICATED",
               [](Daemon& d) { return LookupWith(d, "alice", "Bearer alice-secret-token-0002"); }});
  c.push_back({"auth_not_bearer", "Lookup as alice with \"authorization: Basic <alice's token>\"",
               "UNAUTHENTICATED", [](Daemon& d) {
                 return LookupWith(d, "alice", std::string("Basic ") + kAliceToken);
               }});
  c.push_back(
      {"auth_other_tenants_token", "Lookup as bob with alice's token", "PERMISSION_DENIED",
       [](Daemon& d) { return LookupWith(d, "bob", std::string("Bearer ") + kAliceToken); }});
  c.push_back({"auth_put_other_tenant", "Put a block as bob with alice's token",
               "PERMISSION_DENIED", [](Daemon& d) {
                 return Outcome(PutBlocks(*d.stub, kAliceToken, "bob", Chain(d.Seed(), 1, 4096)));
               }});
  c.push_back({"auth_lease_of_other_tenant",
               "Release, as bob with bob's token, of alice's live lease handle", "NOT_FOUND",
               [](Daemon& d) {
                 const auto b = Chain(d.Seed(), 1, 4096);
                 if (!PutBlocks(*d.stub, kAliceToken, "alice", b).ok())
                   return std::string("put failed");
                 const uint64_t id = LeaseOf(d, "alice", b[0].key, kAliceToken);
                 grpc::Status st = Release(d, "bob", id, kBobToken, 4096);
                 return Outcome(st, Release(d, "alice", id, kAliceToken).ok()
                                        ? ""
                                        : "alice's lease did not survive");
               }});
  c.push_back({"auth_stats_no_token", "Stats with no authorization metadata", "UNAUTHENTICATED",
               [](Daemon& d) {
                 grpc::ClientContext ctx;
                 v1::StatsResponse res;
                 return CodeName(d.stub->Stats(&ctx, v1::StatsRequest(), &res).error_code());
               }});
  c.push_back({"auth_put_empty_stream_no_token",
               "a Put stream with no message and no authorization metadata", "UNAUTHENTICATED",
               [](Daemon& d) { return Outcome(PutStream(*d.stub, "", {})); }});
  c.push_back({"auth_get_session_empty_no_token",
               "a GetSession with no request and no authorization metadata", "UNAUTHENTICATED",
               [](Daemon& d) {
                 auto ctx = Ctx("");
                 auto stream = d.stub->GetSession(ctx.get());
                 stream->WritesDone();
                 (void)ReadBlocks(stream.get());
                 return Outcome(stream->Finish());
               }});
  c.push_back({"durable_put_without_nvme", "Put, durable, on a daemon with no NVMe tier",
               "FAILED_PRECONDITION", [](Daemon& d) {
                 return Outcome(
                     PutBlocks(*d.stub, kAliceToken, "alice", Chain(d.Seed(), 1, 4096), true));
               }});

  c.push_back({"auth_lease_session_empty_no_token",
               "a LeaseSession with no request and no authorization metadata", "UNAUTHENTICATED",
               [](Daemon& d) {
                 auto ctx = Ctx("");
                 auto stream = d.stub->LeaseSession(ctx.get());
                 stream->WritesDone();
                 v1::LeaseSessionResponse res;
                 while (stream->Read(&res)) {
                 }
                 return Outcome(stream->Finish());
               }});
  c.push_back({"auth_lease_session_other_tenant",
               "a lease naming bob on a LeaseSession with alice's token; then one naming alice",
               "PERMISSION_DENIED", [](Daemon& d) {
                 auto ctx = Ctx(kAliceToken);
                 auto stream = d.stub->LeaseSession(ctx.get());
                 v1::LeaseSessionRequest req;
                 req.mutable_lease()->set_tenant("bob");
                 req.mutable_lease()->add_keys(TestKey(d.Seed()).ByteString());
                 v1::LeaseSessionResponse bob, alice;
                 const bool answered = stream->Write(req) && stream->Read(&bob);
                 req.mutable_lease()->set_tenant("alice");  // not cached: NOT_FOUND, answered
                 const bool again = stream->Write(req) && stream->Read(&alice);
                 stream->WritesDone();
                 const grpc::Status end = stream->Finish();
                 if (!answered || !again) return "no answer; the stream: " + Outcome(end);
                 return CodeName(static_cast<grpc::StatusCode>(bob.code())) +
                        (alice.code() == grpc::StatusCode::NOT_FOUND && end.ok()
                             ? ""
                             : " but the stream did not go on");
               }});
  c.push_back({"auth_stats_other_tenant", "Stats naming bob, with alice's token",
               "PERMISSION_DENIED", [](Daemon& d) {
                 auto ctx = Ctx(kAliceToken);
                 v1::StatsRequest req;
                 req.set_tenant("bob");
                 v1::StatsResponse res;
                 return CodeName(d.stub->Stats(ctx.get(), req, &res).error_code());
               }});
  c.push_back({"auth_stats_own_view", "Stats with alice's token", "OK", [](Daemon& d) {
                 auto ctx = Ctx(kAliceToken);
                 v1::StatsResponse res;
                 const grpc::Status st = d.stub->Stats(ctx.get(), v1::StatsRequest(), &res);
                 return Outcome(st, res.tiers_size() > 0 || res.puts() > 0
                                        ? "the daemon-wide counts were shown"
                                        : "");
               }});
  c.push_back({"auth_watch_other_tenant", "WatchBlocks naming bob, with alice's token",
               "PERMISSION_DENIED", [](Daemon& d) {
                 auto ctx = Ctx(kAliceToken);
                 v1::WatchBlocksRequest req;
                 req.set_tenant("bob");
                 auto reader = d.stub->WatchBlocks(ctx.get(), req);
                 v1::BlockEventBatch batch;
                 while (reader->Read(&batch)) {
                 }
                 return Outcome(reader->Finish());
               }});
  c.push_back({"auth_cluster_token_put", "Put as tenant alice with the cluster token",
               "PERMISSION_DENIED", [](Daemon& d) {
                 return Outcome(PutBlocks(*d.stub, kRouterToken, "alice", Chain(d.Seed(), 1, 4096)));
               }});
  c.push_back({"auth_lease_over_tenant_share",
               "Lease: alice holds 4 leased 2 MiB blocks (her 8 MiB share), then leases a 5th",
               "RESOURCE_EXHAUSTED", [](Daemon& d) {
                 // Keys clear of the seeds later rows take.
                 const auto blocks = Chain(d.Seed() * 1000, 5, kMaxBlock);
                 if (!PutBlocks(*d.stub, kAliceToken, "alice", blocks).ok()) return std::string("put failed");
                 std::vector<uint64_t> ids;
                 for (int i = 0; i < 4; ++i) ids.push_back(LeaseOf(d, "alice", blocks[i].key, kAliceToken));
                 auto ctx = Ctx(kAliceToken);
                 v1::LeaseRequest req;
                 req.set_tenant("alice");
                 req.add_keys(blocks[4].key.ByteString());
                 v1::LeaseResponse res;
                 const grpc::Status st = d.stub->Lease(ctx.get(), req, &res);
                 bool released = true;
                 for (uint64_t id : ids) released = Release(d, "alice", id, kAliceToken).ok() && released;
                 return Outcome(st, released ? "" : "a lease could not be released");
               }});

  return c;
}

class BadInputWithAuth : public DaemonRows {
 protected:
  static void SetUpTestSuite() {
    d_ = new Daemon;
    d_->tenant = "alice";
    d_->token = kAliceToken;
    std::ofstream(d_->dir.Sub("tokens.yaml"))
        << "alice: " << kAliceToken << "\nbob: " << kBobToken << "\nrouter: {token: "
        << kRouterToken << ", role: cluster}\n";
    // No NVMe tier (so no durable keeper), no metrics.
    Start(*d_, {"--no-nvme", "--host-mib", "32", "--max-block-mib", "2", "--metrics-listen", "",
                "--auth-tokens", d_->dir.Sub("tokens.yaml")});
    if (!d_->address.empty()) StoreKeepers(*d_, Durable::kNone);
  }
  static void TearDownTestSuite() { Stop(d_); }
  static Daemon* d_;
};
Daemon* BadInputWithAuth::d_ = nullptr;

TEST_P(BadInputWithAuth, AnswersAsTheContractSaysAndKeepsServing) { Run(*d_); }

INSTANTIATE_TEST_SUITE_P(Table, BadInputWithAuth, ::testing::ValuesIn(AuthCases()), RowName);

// ---------------------------------------------------------------------------------------------
// Calls made while a daemon drains after SIGTERM: a Put in flight holds the drain open; every
// new call, and a new request on a Get session opened before, is answered UNAVAILABLE; the Put
// in flight finishes; the daemon exits 0 and, restarted, has its durable blocks.

TEST(BadInputDuringDrain, NewCallsAreUnavailableAndTheCallInFlightFinishes) {
  Daemon d;
  Start(d, {"--max-block-mib", "2"});
  ASSERT_FALSE(d.address.empty());
  StoreKeepers(d, Durable::kAll);  // to be there after the restart
  ASSERT_FALSE(d.keepers.empty());

  const Block in_flight = Chain(d.Seed(), 1, 1 << 20)[0];
  OpenPut put(*d.stub, in_flight);
  ASSERT_EQ(AwaitMetric(d, "kvtier_inflight_bytes", 1 << 20), 1 << 20) << "the put is in flight";
  grpc::ClientContext session_ctx;
  session_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto session = d.stub->GetSession(&session_ctx);
  v1::GetRequest get = GetOf(d.tenant, {d.keepers[0].key});
  ASSERT_TRUE(session->Write(get));
  v1::GetResponse answer;
  ASSERT_TRUE(session->Read(&answer) && answer.found());

  ASSERT_EQ(kill(d.process->pid(), SIGTERM), 0);
  // The first call the drain refuses (the signal takes a moment to arrive).
  std::string observed = "never refused";
  for (const auto until = Clock::now() + std::chrono::seconds(5); Clock::now() < until;) {
    auto ctx = Ctx("");
    v1::LookupRequest req;
    req.set_tenant(d.tenant);
    req.add_keys(d.keepers[0].key.ByteString());
    v1::LookupResponse res;
    grpc::Status st = d.stub->Lookup(ctx.get(), req, &res);
    if (!st.ok()) {
      observed = CodeName(st.error_code());
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Check("drain_lookup", "Lookup after SIGTERM, while a Put is in flight", "UNAVAILABLE", observed);
  Check("drain_put", "a new Put stream after SIGTERM", "UNAVAILABLE",
        Outcome(PutBlocks(*d.stub, "", "t", Chain(d.Seed(), 1, 4096))));
  Check("drain_get", "Get of a stored block after SIGTERM", "UNAVAILABLE",
        Outcome(Get(*d.stub, "", get)));
  Check("drain_stats", "Stats after SIGTERM", "UNAVAILABLE", [&] {
    auto ctx = Ctx("");
    v1::StatsResponse res;
    return Outcome(d.stub->Stats(ctx.get(), v1::StatsRequest(), &res));
  }());
  Check("drain_get_session_request", "a new request on a GetSession opened before SIGTERM",
        "UNAVAILABLE", [&] {
          const bool written = session->Write(get);
          auto got = ReadBlocks(session.get());
          grpc::Status st = session->Finish();
          return Outcome(st, written && got.empty() ? "" : "it was answered");
        }());
  Check("drain_put_in_flight", "the rest of the Put in flight at SIGTERM", "OK",
        Outcome(put.Finish(in_flight)));
  const int status = d.process->Stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;

  // Restarted on the same data: it serves, and has every durable block.
  Start(d, {"--max-block-mib", "2"});
  ASSERT_FALSE(d.address.empty());
  ExpectServesAndIntact(d, "the drain and a restart");
  EXPECT_EQ(d.process->Stop(), 0);
}

}  // namespace
}  // namespace kvtier
