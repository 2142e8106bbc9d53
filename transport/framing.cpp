#include "transport/framing.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace starattn::transport {
namespace {

uint32_t load_le32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | static_cast<uint32_t>(u[1]) << 8 |
         static_cast<uint32_t>(u[2]) << 16 | static_cast<uint32_t>(u[3]) << 24;
}

std::string too_large(size_t size, size_t max_frame) {
  return "frame of " + std::to_string(size) + " bytes exceeds the limit of " +
         std::to_string(max_frame) + " bytes";
}

}  // namespace

std::string encode_frame(const std::string& payload, size_t max_frame) {
  if (payload.size() > max_frame || payload.size() > UINT32_MAX)
    throw FrameError(too_large(payload.size(), max_frame));
  const auto n = static_cast<uint32_t>(payload.size());
  std::string out;
  out.reserve(4 + payload.size());
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += payload;
  return out;
}

uint32_t decode_frame_prefix(const void* prefix, size_t max_frame) {
  const uint32_t n = load_le32(static_cast<const char*>(prefix));
  if (n > max_frame) throw FrameError(too_large(n, max_frame));
  return n;
}

void FrameDecoder::check_head() {
  if (pending() < 4) return;
  try {
    decode_frame_prefix(buffer_.data() + offset_, max_frame_);
  } catch (const FrameError&) {
    broken_ = true;
    throw;
  }
}

void FrameDecoder::feed(const void* data, size_t size) {
  if (broken_) throw FrameError("frame stream already broken by an oversized frame");
  // Drop consumed bytes before growing, so a long-lived connection does not accumulate them.
  if (offset_ > 0 && offset_ == buffer_.size()) {
    buffer_.clear();
    offset_ = 0;
  } else if (offset_ > (1u << 20)) {
    buffer_.erase(0, offset_);
    offset_ = 0;
  }
  buffer_.append(static_cast<const char*>(data), size);
  check_head();
}

std::optional<std::string> FrameDecoder::next() {
  if (broken_ || pending() < 4) return std::nullopt;
  const uint32_t n = load_le32(buffer_.data() + offset_);
  if (pending() < 4 + static_cast<size_t>(n)) return std::nullopt;
  std::string frame = buffer_.substr(offset_ + 4, n);
  offset_ += 4 + static_cast<size_t>(n);
  check_head();
  return frame;
}

void write_frame(int fd, const std::string& payload, size_t max_frame) {
  write_bytes(fd, encode_frame(payload, max_frame));
}

void write_bytes(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw FrameError(std::string("writing to the socket failed: ") + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

std::optional<std::string> read_frame(int fd, size_t max_frame) {
  // Reads exactly `size` bytes; false on end of stream before the first byte.
  auto read_exact = [fd](char* p, size_t size, bool inside_frame) {
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::read(fd, p + done, size - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw FrameError(std::string("reading a frame failed: ") + std::strerror(errno));
      if (n == 0) {
        if (done == 0 && !inside_frame) return false;
        throw FrameError("stream ended inside a frame (" + std::to_string(done) + " of " +
                         std::to_string(size) + " bytes)");
      }
      done += static_cast<size_t>(n);
    }
    return true;
  };
  char head[4];
  if (!read_exact(head, 4, false)) return std::nullopt;
  const uint32_t n = decode_frame_prefix(head, max_frame);
  std::string payload(n, '\0');
  if (n > 0) read_exact(payload.data(), n, true);
  return payload;
}

}  // namespace starattn::transport
