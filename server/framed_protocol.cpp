#include "server/framed_protocol.h"

#include <stdexcept>

namespace starattn::server {

std::string encode_frame(const google::protobuf::MessageLite& message) {
  return transport::encode_frame(message.SerializeAsString(), kMaxServingFrame);
}

serving::GenerateRequest request_to_proto(const RequestSpec& r) {
  serving::GenerateRequest p;
  p.set_chat(r.prompt.chat);
  p.set_context(r.prompt.context_text);
  p.set_query(r.prompt.query_text);
  for (const auto& m : r.prompt.messages) {
    auto* pm = p.add_messages();
    pm->set_role(m.role);
    pm->set_content(m.content);
  }
  p.set_mode(mode_name(r.mode));
  p.set_block_size(r.block_size);
  p.set_anchor_size(r.anchor_size);
  p.set_max_tokens(r.max_tokens);
  p.set_temperature(r.sampling.temperature);
  p.set_top_k(r.sampling.top_k);
  p.set_top_p(r.sampling.top_p);
  p.set_seed(r.sampling.seed);
  for (const auto& s : r.stop_strings) p.add_stop(s);
  p.set_ignore_eos(r.ignore_eos);
  return p;
}

RequestSpec request_from_proto(const serving::GenerateRequest& p) {
  RequestSpec r;
  r.prompt.chat = p.chat();
  if (!r.prompt.chat) {
    // The framed protocol carries text prompts: a question over a document.
    r.prompt.context_is_text = r.prompt.query_is_text = true;
    r.prompt.context_text = p.context();
    r.prompt.query_text = p.query();
  }
  for (const auto& m : p.messages()) r.prompt.messages.push_back({m.role(), m.content()});
  const std::string mode = p.mode().empty() ? "star" : p.mode();
  if (mode != "star" && mode != "full")
    throw std::invalid_argument("mode must be star or full, got '" + mode + "'");
  r.mode = parse_mode(mode);
  if (p.block_size() < 0) throw std::invalid_argument("block_size must not be negative");
  if (p.anchor_size() < 0) throw std::invalid_argument("anchor_size must not be negative");
  r.block_size = p.block_size();
  r.anchor_size = p.anchor_size();
  if (p.max_tokens() < 0) throw std::invalid_argument("max_tokens must not be negative");
  r.max_tokens = p.max_tokens();
  if (!(p.temperature() >= 0)) throw std::invalid_argument("temperature must not be negative");
  r.sampling.temperature = p.temperature();
  if (p.top_k() < 0) throw std::invalid_argument("top_k must not be negative");
  r.sampling.top_k = p.top_k();
  r.sampling.top_p = p.top_p() == 0 ? 1.0f : p.top_p();
  if (!(r.sampling.top_p > 0 && r.sampling.top_p <= 1)) throw std::invalid_argument("top_p must be in (0, 1]");
  r.sampling.seed = p.seed();
  for (const auto& s : p.stop()) r.stop_strings.push_back(s);
  r.ignore_eos = p.ignore_eos();
  if (r.prompt.chat && r.prompt.messages.empty()) throw std::invalid_argument("a chat request needs messages");
  if (!r.prompt.chat && r.prompt.query_text.empty()) throw std::invalid_argument("the query is empty");
  return r;
}

serving::Done completion_to_proto(const RequestStats& c) {
  serving::Done d;
  d.set_finish_reason(c.finish_reason);
  d.set_prompt_tokens(c.prompt_tokens());
  d.set_context_tokens(c.context_tokens);
  d.set_completion_tokens(c.generated);
  d.set_blocks(c.blocks);
  d.set_block_size(c.block_size);
  d.set_anchor_size(c.anchor_size);
  d.set_queue_ms(c.queue_ms);
  d.set_phase1_ms(c.phase1_ms);
  d.set_first_token_ms(c.first_token_ms);
  d.set_decode_ms(c.decode_ms);
  return d;
}

RequestStats completion_from_proto(const serving::Done& d) {
  RequestStats c;
  c.finish_reason = d.finish_reason();
  c.context_tokens = d.context_tokens();
  c.query_tokens = d.prompt_tokens() - d.context_tokens();
  c.generated = d.completion_tokens();
  c.blocks = d.blocks();
  c.block_size = d.block_size();
  c.anchor_size = d.anchor_size();
  c.queue_ms = d.queue_ms();
  c.phase1_ms = d.phase1_ms();
  c.first_token_ms = d.first_token_ms();
  c.decode_ms = d.decode_ms();
  return c;
}

serving::TokenFrame token_to_proto(const TokenEvent& ev) {
  serving::TokenFrame f;
  f.set_text(ev.text);
  for (int32_t t : ev.tokens) f.add_tokens(t);
  return f;
}

TokenEvent token_from_proto(const serving::TokenFrame& f) {
  TokenEvent ev;
  ev.text = f.text();
  ev.tokens.assign(f.tokens().begin(), f.tokens().end());
  return ev;
}

}  // namespace starattn::server
