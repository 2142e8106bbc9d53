#include "runtime/generation.h"

#include <algorithm>

#include "runtime/errors.h"
#include <stdexcept>

namespace starattn {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopMatcher::push(const std::string& text) {
  if (stopped_) return {};
  held_ += text;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    std::string out = held_.substr(0, first);
    held_.clear();
    stopped_ = true;
    return out;
  }
  // Keep the longest tail that could still grow into a stop string.
  size_t keep = 0;
  for (const auto& s : stops_) {
    const size_t limit = std::min(s.size() - 1, held_.size());
    for (size_t n = limit; n > keep; --n)
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(held_);
  return stopped_ ? std::string() : out;
}

namespace {
double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

Generation::Generation(const Transformer& model, ContextShards& shards, int64_t context_len,
                       GenerationSpec spec, const Tokenizer* tokenizer)
    : model_(model), spec_(std::move(spec)) {
  if (spec_.query.empty())
    throw Error(ErrorKind::invalid_request, "the query is empty: it needs at least one token");
  if (spec_.max_tokens < 0) throw Error(ErrorKind::invalid_request, "max_tokens must not be negative");
  if (!spec_.stop_strings.empty() && !tokenizer)
    throw std::invalid_argument("stop strings need a tokenizer to decode the generated text");
  const int64_t capacity = static_cast<int64_t>(spec_.query.size()) + spec_.max_tokens;
  session_ = std::make_unique<QuerySession>(model, shards, context_len, capacity);
  if (tokenizer) decoder_ = std::make_unique<StreamDecoder>(*tokenizer);
  if (!spec_.stop_strings.empty()) stops_ = std::make_unique<StopMatcher>(spec_.stop_strings);
  const bool host = spec_.want_logits || spec_.logits.adjusts_logits() || spec_.logits.wants_logprobs();
  if (host) host_logits_.resize(static_cast<size_t>(model.config().vocab_size));
}

Generation::~Generation() = default;

void Generation::cancel() {
  if (finish_reason_.empty()) finish("cancelled");
}

double Generation::decode_ms() const {
  if (generated_ == 0) return 0;
  const auto end = finished() ? t_end_ : std::chrono::steady_clock::now();
  return ms_between(t_first_, end);
}

std::string Generation::text_tail() {
  if (!decoder_) return {};
  const std::string rest = decoder_->flush();
  if (!stops_) return rest;
  return stops_->push(rest) + stops_->flush();
}

int32_t Generation::choose_token(const Tensor& logits, GeneratedToken& out, const FetchedLogits& fetched) {
  Backend& be = model_.backend();
  const auto step = static_cast<uint64_t>(step_);
  // A backend's sample() picks what sample_token picks from the same logits (its contract), so a
  // host copy of the row, or a batched greedy pick, gives the token sample() would.
  if (host_logits_.empty()) {
    if (fetched.greedy_token >= 0 && spec_.sampling.temperature == 0.0f) {
      validate_sampling(spec_.sampling);
      return fetched.greedy_token;
    }
    return fetched.host_row ? sample_token(fetched.host_row, logits.cols, spec_.sampling, step)
                            : be.sample(logits, spec_.sampling, step);
  }
  // Penalties, bias and logprobs work on a host copy, and the pick is made from it.
  if (fetched.host_row) std::copy(fetched.host_row, fetched.host_row + host_logits_.size(), host_logits_.begin());
  else be.download(logits, host_logits_.data());
  const int64_t n = static_cast<int64_t>(host_logits_.size());
  if (spec_.logits.adjusts_logits()) adjust_logits(host_logits_.data(), n, spec_.logits, history_);
  const int32_t token = sample_token(host_logits_.data(), n, spec_.sampling, step);
  if (spec_.logits.wants_logprobs())
    out.logprob = token_logprob(host_logits_.data(), n, token, spec_.logits.top_logprobs);
  if (spec_.want_logits) out.logits = host_logits_.data();
  return token;
}

bool Generation::finish(const char* reason) {
  finish_reason_ = reason;
  t_end_ = std::chrono::steady_clock::now();
  return false;
}

bool Generation::step(GeneratedToken& out) {
  const bool first = step_ == 0;
  std::vector<int32_t> input;
  if (!begin_step(input)) return false;
  Backend& be = model_.backend();
  if (first) be.profile_section("prefill");
  session_->feed(input);
  const bool more = end_step(session_->logits(), out);
  if (first) be.profile_section("decode");
  return more;
}

bool Generation::begin_step(std::vector<int32_t>& input) {
  if (finished()) return false;
  if (stop_after_this_) return finish("stop");
  if (step_ == 0) {
    t_start_ = std::chrono::steady_clock::now();
    input = spec_.query;
  } else {
    if (step_ >= spec_.max_tokens) return finish("length");
    input.assign(1, last_);
  }
  return true;
}

bool Generation::end_step(const Tensor& logits, GeneratedToken& out, const FetchedLogits& fetched) {
  if (finished()) return false;
  if (step_ >= spec_.max_tokens) return finish("length");
  out = GeneratedToken{};
  const int32_t token = choose_token(logits, out, fetched);
  if (step_ == 0) {
    t_first_ = std::chrono::steady_clock::now();
    first_token_ms_ = ms_between(t_start_, t_first_);
  }
  ++step_;
  if (std::find(spec_.stop_ids.begin(), spec_.stop_ids.end(), token) != spec_.stop_ids.end())
    return finish("stop");
  last_ = token;
  history_.push_back(token);
  ++generated_;
  out.token = token;
  if (decoder_) {
    out.text = decoder_->push(token);
    if (stops_) {
      out.text = stops_->push(out.text);
      if (stops_->stopped()) stop_after_this_ = true;
    }
  }
  if (step_ >= spec_.max_tokens && !stop_after_this_) {
    // The last token: finish now, without a forward whose logits nobody reads.
    finish("length");
  }
  return true;
}

}  // namespace starattn
