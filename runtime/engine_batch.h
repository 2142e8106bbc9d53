// Requests of one Engine decoded together (continuous batching): admit() plans a request and
// begins its phase 1, step() advances every running request by one token in one forward
// (runtime/decode_batch.h). Requests join and leave between steps. Engine::generate stays the
// one-request path.
//
// Phase 1 of a request admitted while others decode runs in chunks (EngineOptions::
// phase1_chunk_tokens), one chunk per step before that step's decode: a 128K-token encode takes
// seconds, and run at once it would hold back every running stream's next token for all of it.
// Chunked, each of their tokens waits for one chunk at most. Encodes run one at a time, in
// admission order; with nobody decoding, a step runs the first one to its end (nothing to wait).
// A phase 1 of at most one chunk's rows, and with chunk 0 any phase 1, runs in admit(), as before.
// With a step share (EngineOptions::phase1_step_share), a step runs only as many layers of the
// chunk as fit that fraction of the last decode step's time (runtime/phase1_pacer.h).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/decode_batch.h"
#include "runtime/engine.h"
#include "runtime/phase1_pacer.h"

namespace starattn {

class EngineBatch {
 public:
  // The engine must outlive the batch. One thread drives a batch. phase1_chunk_tokens: negative
  // takes the engine's option.
  // phase1_step_share: negative takes the engine's option, 0 runs whole chunks.
  explicit EngineBatch(Engine& engine, int64_t phase1_chunk_tokens = -1, double phase1_step_share = -1);
  ~EngineBatch();
  EngineBatch(const EngineBatch&) = delete;
  EngineBatch& operator=(const EngineBatch&) = delete;

  // Plans the request and begins its phase 1 (all of it here with chunk 0 or within one chunk);
  // it decodes from the step after its phase 1 ends. on_token is called for each of its tokens;
  // returning false cancels it. Throws Error for a request the engine refuses (nothing joins).
  // Returns its id.
  uint64_t admit(const RequestSpec& request, GeneratedCallback on_token);
  // The request ends at the next step with "cancelled" (one still encoding frees its partial
  // K/V there); false when it is not running.
  bool cancel(uint64_t id);

  struct Ended {
    uint64_t id = 0;
    RequestEnd end;  // stats, or the error that ended this request alone
  };
  // One chunk of the first pending phase 1 (all of it when nobody decodes), then one decode step
  // of every decoding request; returns the requests that ended in it. A failed chunk ends its
  // request alone. Throws when the shared decode forward fails outside every request (a backend
  // error): then every request stays running.
  std::vector<Ended> step();
  // Requests admitted and not ended (encoding or decoding).
  size_t running() const { return requests_.size(); }
  size_t encoding() const { return encoding_.size(); }

  // Phase-1 progress of a request still encoding: chunks run and rows left of its total.
  struct Phase1Progress {
    int chunks_done = 0;
    int64_t rows_left = 0, rows_total = 0;
  };
  std::optional<Phase1Progress> phase1_progress(uint64_t id) const;
  // Tokens of context K/V the running requests' shards hold room for, K/V shared by requests on
  // one document counted once; 0 once all have ended.
  int64_t kv_tokens_held() const;

 private:
  struct Running {
    std::unique_ptr<AdmittedRequest> request;
    GeneratedCallback on_token;
    bool cancelled = false;  // while encoding: ends at the next step
  };
  // Runs the next chunk of the first pending encode (paced: the layers of it that fit this
  // step's share); a failed chunk ends its request in `ended`.
  void advance_encode(std::vector<Ended>& ended, bool paced);
  void end_encoding(uint64_t id, Ended e, std::vector<Ended>& ended);
  Engine& engine_;
  int64_t chunk_tokens_;
  double step_share_;
  Phase1Pacer pacer_;
  double decode_ms_ = 0;  // the last decode step's wall time (0: none yet)
  DecodeBatch batch_;
  std::map<uint64_t, Running> requests_;
  std::deque<uint64_t> encoding_;  // ids whose phase 1 is pending, in admission order
  uint64_t next_id_ = 1;
};

}  // namespace starattn
