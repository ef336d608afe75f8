#pragma once
// kvtierd over gRPC, for the multi-process tests: start a daemon on a free loopback port, put and
// get blocks through the typed stub, and send bytes that no typed stub would (raw streams through
// gRPC's generic stub). Users link kvtier_proto and kvtier_testing.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/block_key.h"
#include "common/checksum.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "testing/daemon_process.h"
#include "testing/test_util.h"

namespace kvtier::testing {

inline const std::string kDaemon = std::string(KVTIER_BINARY_DIR) + "/kvtierd";

// A kvtierd on 127.0.0.1:0 with a 64 MiB host tier, a 1 GiB NVMe tier in `data_dir` and metrics
// on a free port; `extra` flags come last and override these.
inline std::unique_ptr<DaemonProcess> StartDaemon(const std::string& data_dir,
                                                  std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--listen",    "127.0.0.1:0", "--data",           data_dir,
                                   "--host-mib",  "64",          "--nvme-gib",       "1",
                                   "--log-level", "warn",        "--metrics-listen", "127.0.0.1:0"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto d = std::make_unique<DaemonProcess>(kDaemon, args);
  EXPECT_FALSE(d->address().empty()) << "kvtierd did not start";
  return d;
}

inline std::unique_ptr<v1::CacheService::Stub> Connect(const DaemonProcess& d) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return v1::CacheService::NewStub(
      grpc::CreateCustomChannel(d.address(), grpc::InsecureChannelCredentials(), args));
}

struct Block {
  BlockKey key;
  BlockKey parent;
  std::vector<uint8_t> data;
};

// Blocks first .. first + n - 1, each the parent of the next, of TestBlock bytes.
inline std::vector<Block> Chain(uint64_t first, size_t n, size_t size) {
  std::vector<Block> out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back({TestKey(first + i), i == 0 ? BlockKey{} : TestKey(first + i - 1),
                   TestBlock(first + i, size)});
  }
  return out;
}

inline std::vector<BlockKey> KeysOf(const std::vector<Block>& blocks) {
  std::vector<BlockKey> keys;
  for (const Block& b : blocks) keys.push_back(b.key);
  return keys;
}

// Puts `blocks` in one stream, each payload split into `chunk`-byte messages.
inline grpc::Status PutBlocks(v1::CacheService::Stub& stub, const std::string& tenant,
                              const std::vector<Block>& blocks, size_t chunk = 1 << 20,
                              bool durable = false, v1::PutResponse* response = nullptr) {
  grpc::ClientContext ctx;
  v1::PutResponse local;
  auto writer = stub.Put(&ctx, response != nullptr ? response : &local);
  for (const Block& b : blocks) {
    for (size_t off = 0; off < b.data.size(); off += chunk) {
      v1::PutRequest req;
      req.set_tenant(tenant);
      if (off == 0) {
        v1::BlockHeader* h = req.mutable_header();
        h->set_key(b.key.ByteString());
        if (!b.parent.IsZero()) h->set_parent(b.parent.ByteString());
        h->set_size(b.data.size());
        h->set_checksum(Checksum(b.data.data(), b.data.size()));
        h->set_durable(durable);
      }
      req.set_data(b.data.data() + off, std::min(chunk, b.data.size() - off));
      if (!writer->Write(req)) break;
    }
  }
  writer->WritesDone();
  return writer->Finish();
}

// Gets `keys`; returns one entry per key: the payload, or nullopt when not found.
inline std::vector<std::optional<std::vector<uint8_t>>> GetBlocks(v1::CacheService::Stub& stub,
                                                                  const std::string& tenant,
                                                                  const std::vector<BlockKey>& keys,
                                                                  grpc::Status* status) {
  grpc::ClientContext ctx;
  v1::GetRequest req;
  req.set_tenant(tenant);
  for (const BlockKey& k : keys) req.add_keys(k.ByteString());
  auto reader = stub.Get(&ctx, req);
  std::vector<std::optional<std::vector<uint8_t>>> out;
  v1::GetResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_header()) {
      out.emplace_back();
      if (msg.found()) out.back().emplace();
    }
    if (!out.empty() && out.back().has_value()) {
      out.back()->insert(out.back()->end(), msg.data().begin(), msg.data().end());
    }
  }
  *status = reader->Finish();
  return out;
}

// A Put stream (tenant "t") that has sent a block's header and the first 1 KiB of its payload,
// then waits. Its deadline (60 s) ends it should the daemon never answer.
struct OpenPut {
  OpenPut(v1::CacheService::Stub& stub, const Block& b, const std::string& tenant = "t",
          size_t sent = 1024) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    writer = stub.Put(&ctx, &res);
    v1::PutRequest req;
    req.set_tenant(tenant);
    req.mutable_header()->set_key(b.key.ByteString());
    req.mutable_header()->set_size(b.data.size());
    req.set_data(b.data.data(), sent);
    writer->Write(req);
  }
  grpc::Status Finish(const Block& b) {
    v1::PutRequest req;
    req.set_data(b.data.data() + 1024, b.data.size() - 1024);
    writer->Write(req);
    writer->WritesDone();
    return writer->Finish();
  }
  grpc::ClientContext ctx;
  v1::PutResponse res;
  std::unique_ptr<grpc::ClientWriter<v1::PutRequest>> writer;
};

// What a raw call got back.
struct RawResult {
  grpc::Status status;
  size_t responses = 0;  // messages received
};

// Calls `method` (e.g. "/kvtier.v1.CacheService/Put") through gRPC's generic stub, so that nothing
// checks the bytes on the way: sends `messages` (any bytes) on one stream, half-closes, reads
// every response (at most 10,000), and finishes within `deadline`. `metadata` goes with the call.
inline RawResult RawCall(const std::string& address, const std::string& method,
                         const std::vector<std::string>& messages,
                         std::chrono::milliseconds deadline = std::chrono::seconds(10),
                         const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  grpc::GenericStub stub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  for (const auto& [key, value] : metadata) ctx.AddMetadata(key, value);
  void* const tag = reinterpret_cast<void*>(1);
  auto done = [&] {
    void* got = nullptr;
    bool ok = false;
    return cq.Next(&got, &ok) && ok;
  };
  RawResult result;
  auto call = stub.PrepareCall(&ctx, method, &cq);
  call->StartCall(tag);
  if (done()) {
    for (const std::string& m : messages) {
      grpc::Slice slice(m);
      grpc::ByteBuffer bb(&slice, 1);
      call->Write(bb, tag);
      if (!done()) break;
    }
    call->WritesDone(tag);
    (void)done();
    for (int i = 0; i < 10'000; ++i) {
      grpc::ByteBuffer response;
      call->Read(&response, tag);
      if (!done()) break;
      ++result.responses;
    }
  }
  call->Finish(&result.status, tag);
  (void)done();
  cq.Shutdown();
  void* ignored_tag;
  bool ignored_ok;
  while (cq.Next(&ignored_tag, &ignored_ok)) {
  }
  return result;
}

// Sends `messages` (serialized PutRequests, or any bytes) as one Put stream; returns its status.
inline grpc::Status RawPut(const std::string& address, const std::vector<std::string>& messages) {
  return RawCall(address, "/kvtier.v1.CacheService/Put", messages).status;
}

// One PutRequest carrying all of `b` (header and data), serialized.
inline std::string PutMessage(const std::string& tenant, const Block& b) {
  v1::PutRequest req;
  req.set_tenant(tenant);
  req.mutable_header()->set_key(b.key.ByteString());
  req.mutable_header()->set_size(b.data.size());
  req.set_data(b.data.data(), b.data.size());
  return req.SerializeAsString();
}

}  // namespace kvtier::testing
