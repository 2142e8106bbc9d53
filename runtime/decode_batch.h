// Continuous batching of phase 2: many requests' Generations advance in ONE forward per step.
// The GEMMs take every member's rows together (one row per request, or its whole query on its
// first step), each row at its own position; the attention of each request's rows goes to that
// request's QuerySession (its own query/generated K/V, its own ContextShards, its own merge);
// the logits come out for each request's last row only. Per layer the requests' launches are
// grouped (QuerySession::attend_layer: one K/V append, one causal attention, one attention over
// the in-process shards, one merge, whatever the batch size), and every request's context
// attention is started before any is finished (ContextShards::start/finish), so the shards'
// transport can answer all requests of a layer with one message and one attention call per
// worker (actors/exchange_batch.h). The token choice and stop rules stay
// in Generation (begin_step / end_step): this file only schedules rows, and fetches the step's
// logits for all requests at once (one download, one argmax launch) rather than per request.
//
// Requests join (add) and leave (remove, or when they finish or fail) between steps. A request
// whose attention throws (a failed worker behind its ContextShards) fails alone: its rows carry
// zeros through the rest of that forward (every op but attention is row-wise, so the other rows
// do not see them), nothing of it is committed, and it leaves the batch with its error while
// the others get their tokens from the same forward.
#pragma once

#include <cstdint>
#include <exception>
#include <vector>

#include "runtime/generation.h"
#include "runtime/transformer.h"

namespace starattn {

class DecodeBatch {
 public:
  explicit DecodeBatch(const Transformer& model);
  ~DecodeBatch();
  DecodeBatch(const DecodeBatch&) = delete;
  DecodeBatch& operator=(const DecodeBatch&) = delete;

  // `generation` joins from the next step on (it must not have stepped yet, or have stepped only
  // in batches: its first step feeds its query). It must outlive its membership. Throws when
  // `id` is a member already.
  void add(uint64_t id, Generation& generation);
  // Leaves now, without a step (the caller may then destroy it); false when not a member.
  bool remove(uint64_t id);
  bool contains(uint64_t id) const;
  size_t size() const { return members_.size(); }
  bool empty() const { return members_.empty(); }

  struct Result {
    uint64_t id = 0;
    Generation* generation = nullptr;
    bool produced = false;      // `token` is this step's token (stream it)
    GeneratedToken token;       // its logits stay valid until this generation's next step
    std::exception_ptr error;   // this request failed; it has left the batch
  };
  // One step of every member in one forward; one result per member, in join order. Members
  // that finished (generation->finished(): stop, length, cancelled) or failed have left the
  // batch. Throws only when the forward fails outside every request's attention (a backend
  // error); then nothing is committed and every member stays.
  std::vector<Result> step();

 private:
  struct Member {
    uint64_t id = 0;
    Generation* generation = nullptr;
  };
  class Hook;
  const Transformer& model_;
  std::vector<Member> members_;
  Workspace ws_;
  // This step's logits rows as fetched for every request at once (fetch_logits): a host copy
  // when any request picks on the host, greedy picks when any only needs one.
  void fetch_logits(const std::vector<Result>& results, const std::vector<size_t>& range_of, size_t rows);
  std::vector<float> host_logits_;
  std::vector<int32_t> greedy_;
};

}  // namespace starattn
