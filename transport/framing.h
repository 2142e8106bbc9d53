// Length-prefixed frames for stream sockets: a u32 little-endian length, then that many bytes.
//
// A stream socket delivers bytes, not messages; the prefix restores message boundaries. The
// maximum frame size is checked before anything is buffered, so a peer sending garbage (which
// decodes as an arbitrary length) is refused instead of making us allocate gigabytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace starattn::transport {

constexpr size_t kDefaultMaxFrame = 64u << 20;

class FrameError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The 4-byte prefix followed by `payload`; throws FrameError when it exceeds max_frame.
std::string encode_frame(const std::string& payload, size_t max_frame = kDefaultMaxFrame);

// The payload length a 4-byte prefix announces; throws FrameError when it exceeds max_frame.
// For readers that fetch the prefix and the payload themselves (asynchronous sockets).
uint32_t decode_frame_prefix(const void* prefix, size_t max_frame = kDefaultMaxFrame);

// Incremental decoder: feed() whatever the socket returned, then next() pops complete frames.
class FrameDecoder {
 public:
  explicit FrameDecoder(size_t max_frame = kDefaultMaxFrame) : max_frame_(max_frame) {}

  // Throws FrameError as soon as a prefix announces a frame larger than max_frame; the decoder
  // is then unusable (the stream has lost its boundaries) and the connection should be closed.
  void feed(const void* data, size_t size);
  std::optional<std::string> next();
  // Bytes received but not yet returned as a frame (a partial frame at the end of a stream).
  size_t pending() const { return buffer_.size() - offset_; }

 private:
  void check_head();
  size_t max_frame_;
  std::string buffer_;
  size_t offset_ = 0;
  bool broken_ = false;
};

// Blocking helpers for a connected socket fd: write a whole frame / read one. read_frame
// returns nullopt on a clean end of stream between frames and throws FrameError on a stream
// that ends inside a frame, on an oversized frame, or on a socket error.
void write_frame(int fd, const std::string& payload, size_t max_frame = kDefaultMaxFrame);
// Writes all of `bytes` (already framed, or deliberately not: tests of bad peers); throws
// FrameError naming the socket error.
void write_bytes(int fd, const std::string& bytes);
std::optional<std::string> read_frame(int fd, size_t max_frame = kDefaultMaxFrame);

}  // namespace starattn::transport
