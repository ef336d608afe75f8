// Test helper for bad_input_test: a kvtierd client that stops in the middle of a call, prints
// "mid-call on ADDRESS" once the daemon is mid-call, and waits to be killed (exits 3 if 60 s pass
// first).
//   bad_input_client ADDRESS put TENANT SEED        a Put of a 1 MiB block TestKey(SEED): its
//   header
//                                                   and the first 256 KiB of its payload
//   bad_input_client ADDRESS get TENANT SEED N      a Get naming TestKey(SEED) N times, of whose
//                                                   answer it reads one message
//   bad_input_client ADDRESS session TENANT SEED N  the same request on a GetSession
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "kvtier/v1/cache.grpc.pb.h"
#include "testing/test_util.h"

namespace {

void ReadyThenWait(const char* address) {
  std::printf("mid-call on %s\n", address);
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::seconds(60));
  std::_Exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: bad_input_client ADDRESS put|get|session TENANT SEED [N]\n");
    return 2;
  }
  const std::string mode = argv[2];
  const std::string tenant = argv[3];
  const std::string key =
      kvtier::testing::TestKey(std::strtoull(argv[4], nullptr, 10)).ByteString();
  const int n = argc > 5 ? std::atoi(argv[5]) : 1;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto stub = kvtier::v1::CacheService::NewStub(
      grpc::CreateCustomChannel(argv[1], grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  if (mode == "put") {
    kvtier::v1::PutResponse res;
    auto writer = stub->Put(&ctx, &res);
    kvtier::v1::PutRequest req;
    req.set_tenant(tenant);
    req.mutable_header()->set_key(key);
    req.mutable_header()->set_size(1 << 20);
    req.set_data(std::string(256 << 10, 'p'));
    if (!writer->Write(req)) return 1;
    ReadyThenWait(argv[1]);
  }
  kvtier::v1::GetRequest req;
  req.set_tenant(tenant);
  for (int i = 0; i < n; ++i) req.add_keys(key);
  kvtier::v1::GetResponse msg;
  if (mode == "get") {
    auto reader = stub->Get(&ctx, req);
    if (!reader->Read(&msg)) return 1;
    ReadyThenWait(argv[1]);
  }
  if (mode == "session") {
    auto stream = stub->GetSession(&ctx);
    if (!stream->Write(req) || !stream->Read(&msg)) return 1;
    ReadyThenWait(argv[1]);
  }
  std::fprintf(stderr, "bad_input_client: unknown mode '%s'\n", mode.c_str());
  return 2;
}
