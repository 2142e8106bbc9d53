// The one converter between the runtime's request vocabulary (runtime/request.h) and its image
// on the control plane (starattn.proto): what a remote client submits and is streamed back.
// Header-only: the transport library does not link the runtime, these only copy fields (the
// actors that include it link the runtime: parse_mode, mode_name).
#pragma once

#include <algorithm>
#include <cstring>

#include "runtime/backend.h"
#include "runtime/context_cache.h"
#include "runtime/request.h"
#include "runtime/sampling.h"
#include "transport/wire.h"

namespace starattn::wire {

inline void to_wire(const SamplingParams& s, Sampling* out) {
  out->set_temperature(s.temperature);
  out->set_top_k(s.top_k);
  out->set_top_p(s.top_p);
  out->set_seed(s.seed);
}

inline void to_wire(const ContextCacheMetrics& m, ContextCacheStatus* out) {
  out->set_hits(m.hits);
  out->set_misses(m.misses);
  out->set_evictions(m.evictions);
  out->set_inserts(m.inserts);
  out->set_rejected(m.rejected);
  out->set_bytes(m.bytes);
  out->set_budget_bytes(m.budget_bytes);
  out->set_entries(m.entries);
  out->set_pinned_entries(m.pinned_entries);
  out->set_shared_shards(m.shared_shards);
}

inline ContextCacheMetrics from_wire(const ContextCacheStatus& s) {
  ContextCacheMetrics m;
  m.hits = s.hits();
  m.misses = s.misses();
  m.evictions = s.evictions();
  m.inserts = s.inserts();
  m.rejected = s.rejected();
  m.bytes = s.bytes();
  m.budget_bytes = s.budget_bytes();
  m.entries = s.entries();
  m.pinned_entries = s.pinned_entries();
  m.shared_shards = s.shared_shards();
  return m;
}

inline SamplingParams from_wire(const Sampling& s) {
  SamplingParams p;
  p.temperature = s.temperature();
  p.top_k = s.top_k();
  // proto3 has no presence: an unset top_p reads 0, which means "no limit" here as 1 does.
  p.top_p = s.top_p() > 0 ? s.top_p() : 1.0f;
  p.seed = s.seed();
  return p;
}

inline void to_wire(const starattn::LogitsProcessing& l, LogitsProcessing* out) {
  out->set_presence_penalty(l.presence_penalty);
  out->set_frequency_penalty(l.frequency_penalty);
  for (const auto& [id, bias] : l.logit_bias) {
    out->add_bias_ids(id);
    out->add_bias_values(bias);
  }
  out->set_logprobs(l.top_logprobs >= 0);
  out->set_top_logprobs(l.top_logprobs >= 0 ? l.top_logprobs : 0);
}

inline starattn::LogitsProcessing from_wire(const LogitsProcessing& l) {
  starattn::LogitsProcessing p;
  p.presence_penalty = l.presence_penalty();
  p.frequency_penalty = l.frequency_penalty();
  const int n = std::min(l.bias_ids_size(), l.bias_values_size());
  for (int i = 0; i < n; ++i) p.logit_bias.emplace_back(l.bias_ids(i), l.bias_values(i));
  p.top_logprobs = l.logprobs() ? l.top_logprobs() : -1;
  return p;
}

inline void to_wire(const starattn::TokenLogprob& t, TokenLogprob* out) {
  out->set_token(t.token);
  out->set_logprob(t.logprob);
  for (const auto& [id, lp] : t.top) {
    out->add_top_ids(id);
    out->add_top_logprobs(lp);
  }
}

inline starattn::TokenLogprob from_wire(const TokenLogprob& t) {
  starattn::TokenLogprob p;
  p.token = t.token();
  p.logprob = t.logprob();
  const int n = std::min(t.top_ids_size(), t.top_logprobs_size());
  for (int i = 0; i < n; ++i) p.top.emplace_back(t.top_ids(i), t.top_logprobs(i));
  return p;
}

inline SubmitRequest to_wire(const RequestSpec& r) {
  SubmitRequest s;
  s.set_protocol_version(kProtocolVersion);
  const PromptSpec& p = r.prompt;
  for (const auto& m : p.messages) {
    auto* turn = s.add_messages();
    turn->set_role(m.role);
    turn->set_content(m.content);
  }
  for (int32_t id : p.context) s.add_context(id);
  for (int32_t id : p.query) s.add_query(id);
  s.set_context_is_text(p.context_is_text);
  s.set_context_text(p.context_text);
  s.set_query_is_text(p.query_is_text);
  s.set_query_text(p.query_text);
  s.set_mode(mode_name(r.mode));
  s.set_block_size(r.block_size);
  s.set_anchor_size(r.anchor_size);
  s.set_no_anchor(!r.use_anchor);
  s.set_max_tokens(r.max_tokens);
  to_wire(r.sampling, s.mutable_sampling());
  for (int32_t id : r.stop_ids) s.add_stop_ids(id);
  s.set_ignore_eos(r.ignore_eos);
  s.set_want_logits(r.want_logits);
  for (const auto& stop : r.stop_strings) s.add_stop_strings(stop);
  to_wire(r.logits, s.mutable_logits());
  return s;
}

// Throws Error(invalid_request) for an unknown mode. A chat is a submission with messages.
inline RequestSpec from_wire(const SubmitRequest& s) {
  RequestSpec r;
  PromptSpec& p = r.prompt;
  p.chat = s.messages_size() > 0;
  for (const auto& m : s.messages()) p.messages.push_back({m.role(), m.content()});
  p.context.assign(s.context().begin(), s.context().end());
  p.query.assign(s.query().begin(), s.query().end());
  p.context_is_text = s.context_is_text();
  p.context_text = s.context_text();
  p.query_is_text = s.query_is_text();
  p.query_text = s.query_text();
  r.mode = parse_mode(s.mode());
  r.block_size = s.block_size();
  r.anchor_size = s.anchor_size();
  r.use_anchor = !s.no_anchor();
  r.max_tokens = s.max_tokens();
  r.sampling = from_wire(s.sampling());
  r.stop_ids.assign(s.stop_ids().begin(), s.stop_ids().end());
  r.ignore_eos = s.ignore_eos();
  r.want_logits = s.want_logits();
  for (const auto& stop : s.stop_strings()) r.stop_strings.push_back(stop);
  r.logits = from_wire(s.logits());
  return r;
}

// One event per token on this wire (the tokens' first id; the actors stream one token a step).
inline TokenEvent to_wire(uint64_t request_id, const starattn::TokenEvent& ev) {
  TokenEvent t;
  t.set_request_id(request_id);
  if (!ev.tokens.empty()) t.set_token(ev.tokens.front());
  t.set_text(ev.text);
  if (!ev.logits.empty())
    t.set_logits(ev.logits.data(), ev.logits.size() * sizeof(float));
  if (!ev.logprobs.empty()) to_wire(ev.logprobs.front(), t.mutable_logprob());
  return t;
}

inline starattn::TokenEvent from_wire(const TokenEvent& t) {
  starattn::TokenEvent ev;
  ev.tokens.push_back(t.token());
  ev.text = t.text();
  ev.logits.resize(t.logits().size() / sizeof(float));
  if (!ev.logits.empty()) std::memcpy(ev.logits.data(), t.logits().data(), ev.logits.size() * sizeof(float));
  if (t.has_logprob()) ev.logprobs.push_back(from_wire(t.logprob()));
  return ev;
}

inline Finished to_wire(uint64_t request_id, const RequestEnd& e) {
  Finished f;
  const RequestStats& s = e.stats;
  f.set_request_id(request_id);
  f.set_ok(e.ok);
  if (!e.ok) {
    f.set_error(e.error);
    f.set_error_kind(to_wire(e.error_kind));
  }
  f.set_finish_reason(s.finish_reason);
  f.set_text_tail(s.text_tail);
  f.set_context_tokens(s.context_tokens);
  f.set_query_tokens(s.query_tokens);
  f.set_block_size(s.block_size);
  f.set_anchor_size(s.anchor_size);
  f.set_blocks(s.blocks);
  f.set_workers_used(s.workers_used);
  f.set_blocks_reused(s.blocks_reused);
  f.set_generated(s.generated);
  f.set_phase1_ms(s.phase1_ms);
  f.set_first_token_ms(s.first_token_ms);
  f.set_decode_ms(s.decode_ms);
  f.set_exchanges(s.exchanges);
  f.set_exchange_mean_us(s.exchange_mean_us);
  f.set_exchange_p50_us(s.exchange_p50_us);
  f.set_exchange_max_us(s.exchange_max_us);
  return f;
}

inline RequestEnd from_wire(const Finished& f) {
  RequestEnd e;
  e.ok = f.ok();
  if (!e.ok) {
    e.error = f.error();
    e.error_kind = from_wire(f.error_kind());
  }
  RequestStats& s = e.stats;
  s.finish_reason = f.finish_reason();
  s.text_tail = f.text_tail();
  s.context_tokens = f.context_tokens();
  s.query_tokens = f.query_tokens();
  s.block_size = f.block_size();
  s.anchor_size = f.anchor_size();
  s.blocks = f.blocks();
  s.workers_used = f.workers_used();
  s.blocks_reused = f.blocks_reused();
  s.generated = f.generated();
  s.phase1_ms = f.phase1_ms();
  s.first_token_ms = f.first_token_ms();
  s.decode_ms = f.decode_ms();
  s.exchanges = f.exchanges();
  s.exchange_mean_us = f.exchange_mean_us();
  s.exchange_p50_us = f.exchange_p50_us();
  s.exchange_max_us = f.exchange_max_us();
  return e;
}

}  // namespace starattn::wire
