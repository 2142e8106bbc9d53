// The framed TCP protocol's pieces shared by server and client: its frame limit and version,
// and the one converter between serving.proto and the runtime's request vocabulary
// (runtime/request.h). The frames themselves are
// transport/framing.h's (u32 little-endian length + bytes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/generation_service.h"
#include "server/serving.pb.h"
#include "transport/framing.h"

namespace starattn::server {

constexpr uint32_t kServingProtocolVersion = 1;
// Larger frames are refused before anything is buffered: a peer speaking another protocol
// decodes as a huge length.
constexpr size_t kMaxServingFrame = transport::kDefaultMaxFrame;

// The serialized message as one frame; throws transport::FrameError beyond kMaxServingFrame.
std::string encode_frame(const google::protobuf::MessageLite& message);

serving::GenerateRequest request_to_proto(const RequestSpec& request);
// Throws std::invalid_argument naming the field for values the service cannot take.
RequestSpec request_from_proto(const serving::GenerateRequest& request);

serving::Done completion_to_proto(const RequestStats& completion);
RequestStats completion_from_proto(const serving::Done& done);

// Text and token ids only: the framed protocol carries neither logprobs nor logits.
serving::TokenFrame token_to_proto(const TokenEvent& event);
TokenEvent token_from_proto(const serving::TokenFrame& frame);

}  // namespace starattn::server
