#pragma once
// HTTP/2 settings for kvtier's gRPC channels, shared by the daemon and its clients. KV blocks are
// megabytes: with gRPC's defaults (16 KiB frames, a 64 KiB initial window grown by probing) a
// 1 MiB Get took about 1.6 ms on loopback, most of it in small writes and window updates.

namespace kvtier {

// Largest HTTP/2 frame (the protocol's maximum).
inline constexpr int kGrpcMaxFrameBytes = (1 << 24) - 1;
// Initial per-stream flow-control window.
inline constexpr int kGrpcStreamWindowBytes = 64 << 20;
// Bytes the transport may buffer for writing before it pushes back.
inline constexpr int kGrpcWriteBufferBytes = 16 << 20;
// Size of a socket read.
inline constexpr int kGrpcReadChunkBytes = 4 << 20;

}  // namespace kvtier
