// The one converter between the runtime's request vocabulary (runtime/sampling.h,
// runtime/backend.h) and its image on the control plane (starattn.proto). Header-only: the
// transport library does not link the runtime, these only copy fields.
#pragma once

#include <algorithm>

#include "runtime/backend.h"
#include "runtime/context_cache.h"
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

}  // namespace starattn::wire
