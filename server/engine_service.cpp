#include "server/engine_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "runtime/chat_template.h"
#include "runtime/engine_batch.h"
#include "runtime/errors.h"
#include "runtime/prompt.h"
#include "runtime/request_plan.h"

namespace starattn::server {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// One request: queued, then run by an engine thread. The handle a client holds is this object.
struct Job : RequestHandle {
  RequestSpec request;
  StreamCallbacks callbacks;
  Clock::time_point submitted = Clock::now();
  std::atomic<bool> cancelled{false};
  std::function<bool(Job*)> dequeue;  // removes it from the queue if still there

  void cancel() override {
    if (cancelled.exchange(true)) return;
    // A queued job never reaches an engine: finish it here, on the cancelling thread.
    if (dequeue && dequeue(this)) {
      RequestStats c;
      c.finish_reason = "cancelled";
      c.queue_ms = ms_between(submitted, Clock::now());
      callbacks.on_done(c);
    }
  }
};

void fail(const StreamCallbacks& cb, ErrorKind kind, std::string message) {
  cb.on_error(Error(kind, std::move(message)));
}

// A job an engine's batch runs.
struct Active {
  std::shared_ptr<Job> job;
  Clock::time_point started;      // it left the queue
  int64_t kv = 0;                 // tokens of K/V it holds: context, query, generated
  bool client_cancelled = false;  // the client hung up or cancelled: it ends "cancelled"
};

}  // namespace

struct EngineService::Impl : std::enable_shared_from_this<Impl> {
  EngineServiceOptions options;
  std::vector<std::unique_ptr<Engine>> engines;
  ChatTemplate chat_template;
  std::string model_name;
  ServiceInfo info;

  mutable std::mutex mutex;
  std::condition_variable wake;  // idle engines wait on it for the queue
  std::deque<std::shared_ptr<Job>> queue;
  bool stopping = false;
  // Per engine, under `mutex`: jobs it runs or is admitting, and whether a job waits for room
  // on it (then it takes no other job until one of its requests ends).
  std::vector<int> slots_used;
  std::vector<char> waits_for_room;
  std::vector<std::unique_ptr<std::atomic<int64_t>>> kv_tokens;  // per engine
  BatchCounters counters;  // under `mutex`
  std::vector<std::thread> threads;

  bool remove_queued(Job* job) {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = std::find_if(queue.begin(), queue.end(),
                                 [&](const std::shared_ptr<Job>& j) { return j.get() == job; });
    if (it == queue.end()) return false;
    queue.erase(it);
    return true;
  }

  // Under `mutex`. Queued jobs go to the least busy engine that has a slot, so that two
  // engines share a burst instead of one batching it all while the other idles.
  bool may_take(size_t index) const {
    if (waits_for_room[index] || slots_used[index] >= options.max_batch) return false;
    for (size_t j = 0; j < slots_used.size(); ++j)
      if (!waits_for_room[j] && slots_used[j] < slots_used[index]) return false;
    return true;
  }
  // Under `mutex`: requests the engines would start now without queueing.
  int64_t free_slots() const {
    int64_t free = 0;
    for (size_t i = 0; i < slots_used.size(); ++i)
      if (!waits_for_room[i]) free += std::max(options.max_batch - slots_used[i], 0);
    return free;
  }

  // The same layouts as the head's scheduler and `starattn run` (runtime/prompt.h), so a
  // request gets the same tokens whichever front end serves it; laid out here to check the
  // server's context limit and the request's own limits (which no waiting would change), then
  // handed to the engine as ids.
  RequestSpec lay_out(const Engine& engine, const RequestSpec& request) const {
    RequestSpec g = request;
    PromptIds p = resolve_prompt(g.prompt, engine.tokenizer(), engine.chat_template(), chat_template,
                                 engine.config().bos_token_id);
    const int64_t limit = options.max_context_tokens;
    if (limit > 0 && static_cast<int64_t>(p.context.size()) > limit)
      throw Error(ErrorKind::capacity,
                  "context of " + std::to_string(p.context.size()) +
                      " tokens is larger than this server's limit of " + std::to_string(limit) +
                      " context tokens");
    validate_request(p.context, p.query, g.max_tokens, engine.config(), g.beyond_positions);
    g.prompt = PromptSpec();
    g.prompt.context = std::move(p.context);
    g.prompt.query = std::move(p.query);
    return g;
  }

  class EngineLoop;
  void worker_loop(size_t index);
};

// One engine's thread: admits queued jobs between steps, steps its batch, ends what ended.
class EngineService::Impl::EngineLoop {
 public:
  EngineLoop(Impl& service, size_t index)
      : s_(service), index_(index), engine_(*service.engines[index]),
        kv_(*service.kv_tokens[index]), batch_(std::make_unique<EngineBatch>(engine_)) {}

  void run() {
    while (admit_queued()) {
      cancel_hung_up();
      if (batch_->running() > 0) step();
    }
  }

 private:
  // Takes queued jobs while this engine may (slots, room); waits for one while it runs none.
  // False once the service stops and nothing runs here any more.
  bool admit_queued() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(s_.mutex);
        if (active_.empty()) s_.wake.wait(lock, [&] { return s_.stopping || !s_.queue.empty(); });
        if (s_.stopping) {
          // Running requests end "cancelled" at the next step, as a hung-up client's do.
          for (auto& entry : active_) entry.second->job->cancelled = true;
          return !active_.empty();
        }
        if (s_.queue.empty() || !s_.may_take(index_)) return true;
        job = std::move(s_.queue.front());
        s_.queue.pop_front();
        ++s_.slots_used[index_];
      }
      admit(std::move(job));
    }
  }

  void admit(std::shared_ptr<Job> job) {
    auto a = std::make_shared<Active>();
    a->started = Clock::now();
    a->job = std::move(job);
    Job& j = *a->job;
    if (j.cancelled) {  // cancelled between leaving the queue and starting
      release_slot();
      RequestStats c;
      c.finish_reason = "cancelled";
      c.queue_ms = ms_between(j.submitted, a->started);
      j.callbacks.on_done(c);
      return;
    }
    RequestSpec g;
    try {
      g = s_.lay_out(engine_, j.request);
    } catch (const std::exception& e) {
      release_slot();
      fail_with(j, e);
      return;
    }
    try {
      const uint64_t id = batch_->admit(g, [this, a](const GeneratedToken& t) { return stream(*a, t); });
      a->kv = static_cast<int64_t>(g.prompt.context.size() + g.prompt.query.size());
      kv_ += a->kv;
      active_.emplace(id, std::move(a));
    } catch (const std::exception& e) {
      // The engine plans a request against the memory free now: beside running requests a
      // capacity refusal may only mean "not yet". The job goes back to the queue's front and
      // this engine takes none until one of its requests ends; alone, it never fits here.
      if (kind_of(e) == ErrorKind::capacity && !active_.empty()) {
        requeue(a->job);
        return;
      }
      release_slot();
      fail_with(j, e);
    }
  }

  // Back to the queue's front; when the service stops meanwhile (the destructor has taken the
  // queue already) it fails as the queued jobs do.
  void requeue(const std::shared_ptr<Job>& job) {
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      --s_.slots_used[index_];
      if (!s_.stopping) {
        s_.queue.push_front(job);
        s_.waits_for_room[index_] = 1;
        return;
      }
    }
    fail(job->callbacks, ErrorKind::shutting_down, "the server is shutting down");
  }

  void release_slot() {
    std::lock_guard<std::mutex> lock(s_.mutex);
    --s_.slots_used[index_];
  }

  // The batch's token callback (on this thread, inside step()).
  bool stream(Active& a, const GeneratedToken& t) {
    ++a.kv;
    ++kv_;
    Job& job = *a.job;
    if (job.cancelled) {
      a.client_cancelled = true;
      return false;
    }
    TokenEvent ev;
    ev.text = t.text;
    ev.tokens.push_back(t.token);
    if (t.logprob) ev.logprobs.push_back(*t.logprob);
    if (t.logits) ev.logits.assign(t.logits, t.logits + engine_.config().vocab_size);
    if (!job.callbacks.on_token(ev)) {
      job.cancelled = true;
      a.client_cancelled = true;
      return false;
    }
    return true;
  }

  // Cancels (handle.cancel(), shutdown) take effect between steps: the request ends at the next.
  void cancel_hung_up() {
    for (auto& [id, a] : active_) {
      if (!a->job->cancelled || a->client_cancelled) continue;
      a->client_cancelled = true;
      batch_->cancel(id);
    }
  }

  void step() {
    const int n = static_cast<int>(batch_->running());
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      BatchCounters& c = s_.counters;
      ++c.steps;
      if (n > 1) ++c.batched_steps;
      c.largest_batch = std::max(c.largest_batch, n);
    }
    std::vector<EngineBatch::Ended> ended;
    try {
      ended = batch_->step();
    } catch (const std::exception& e) {
      // The shared forward failed outside every request (a backend error): every running
      // request ends with it, and a fresh batch frees their memory.
      std::map<uint64_t, std::shared_ptr<Active>> failed;
      failed.swap(active_);
      batch_ = std::make_unique<EngineBatch>(engine_);
      for (auto& entry : failed) {
        end_slot(*entry.second);
        fail_with(*entry.second->job, e);
      }
      return;
    }
    for (EngineBatch::Ended& e : ended) {
      const auto it = active_.find(e.id);
      if (it == active_.end()) continue;
      const std::shared_ptr<Active> a = it->second;
      active_.erase(it);
      end_slot(*a);
      finish(*a, e.end);
    }
  }

  // A request left the batch: its K/V and slot are free, so a job waiting for room may retry.
  void end_slot(const Active& a) {
    kv_ -= a.kv;
    std::lock_guard<std::mutex> lock(s_.mutex);
    --s_.slots_used[index_];
    s_.waits_for_room[index_] = 0;
  }

  static void finish(Active& a, const RequestEnd& end) {
    Job& job = *a.job;
    if (!end.ok) {
      fail(job.callbacks, end.error_kind,
           end.error_kind == ErrorKind::internal ? "generation failed: " + end.error : end.error);
      return;
    }
    RequestStats st = end.stats;
    if (!a.client_cancelled && !st.text_tail.empty()) {
      TokenEvent tail;
      tail.text = st.text_tail;
      job.callbacks.on_token(tail);
    }
    if (a.client_cancelled) st.finish_reason = "cancelled";
    st.text_tail.clear();  // streamed above
    st.queue_ms = ms_between(job.submitted, a.started);
    job.callbacks.on_done(st);
  }

  static void fail_with(Job& job, const std::exception& e) {
    const ErrorKind kind = kind_of(e);
    fail(job.callbacks, kind,
         kind == ErrorKind::internal ? std::string("generation failed: ") + e.what() : e.what());
  }

  Impl& s_;
  const size_t index_;
  Engine& engine_;
  std::atomic<int64_t>& kv_;
  std::unique_ptr<EngineBatch> batch_;
  std::map<uint64_t, std::shared_ptr<Active>> active_;  // by batch id
};

void EngineService::Impl::worker_loop(size_t index) { EngineLoop(*this, index).run(); }

EngineService::EngineService(const EngineServiceOptions& options) : impl_(std::make_shared<Impl>()) {
  if (options.engines < 1)
    throw std::invalid_argument("engines must be at least 1, got " + std::to_string(options.engines));
  if (options.max_batch < 1)
    throw std::invalid_argument("max_batch must be at least 1, got " + std::to_string(options.max_batch));
  if (options.max_queue < 0)
    throw std::invalid_argument("max_queue must not be negative");
  Impl& s = *impl_;
  s.options = options;
  // Each engine is built on the thread that will run it: a GPU backend binds its device to the
  // thread that creates it, and every later call must come from that thread.
  const size_t n = static_cast<size_t>(options.engines);
  s.engines.resize(n);
  s.slots_used.assign(n, 0);
  s.waits_for_room.assign(n, 0);
  for (size_t i = 0; i < n; ++i) s.kv_tokens.push_back(std::make_unique<std::atomic<int64_t>>(0));
  std::vector<std::future<int64_t>> ready;
  for (size_t i = 0; i < n; ++i) {
    auto promise = std::make_shared<std::promise<int64_t>>();
    ready.push_back(promise->get_future());
    s.threads.emplace_back([impl = impl_.get(), i, promise] {
      try {
        impl->engines[i] = std::make_unique<Engine>(impl->options.engine);
        promise->set_value(impl->engines[i]->kv_capacity_tokens());
      } catch (...) {
        promise->set_exception(std::current_exception());
        return;
      }
      impl->worker_loop(i);
    });
  }
  int64_t capacity = 0;
  std::exception_ptr failed;
  for (size_t i = 0; i < n; ++i) {
    try {
      const int64_t c = ready[i].get();
      if (i == 0) capacity = c;
    } catch (...) {
      if (!failed) failed = std::current_exception();
    }
  }
  const auto stop_threads = [&s] {
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.stopping = true;
    }
    s.wake.notify_all();
    for (auto& t : s.threads) t.join();
  };
  if (failed) {
    stop_threads();
    std::rethrow_exception(failed);
  }
  try {
    s.chat_template = s.engines.front()->chat_for_messages();
  } catch (...) {
    stop_threads();  // the threads are running: a constructor that throws must not leave them
    throw;
  }
  s.model_name = options.model_name;
  if (s.model_name.empty()) {
    std::filesystem::path p(options.engine.model);
    if (!p.has_filename()) p = p.parent_path();
    s.model_name = p.filename().string();
  }
  // Computed once: asking a backend for free memory from a network thread while it runs a
  // request on its own thread is not something every backend supports.
  s.info.model = s.model_name;
  s.info.max_context_tokens = options.max_context_tokens > 0 ? options.max_context_tokens : capacity;
  s.info.max_queue = options.max_queue;
  // Front ends name the tokens of logprobs with it; the engines (and their tokenizer) live as
  // long as the service.
  s.info.token_bytes = [tok = &s.engines.front()->tokenizer()](int32_t id) { return tok->token_bytes(id); };
}

EngineService::~EngineService() {
  std::deque<std::shared_ptr<Job>> dropped;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
    dropped.swap(impl_->queue);  // running requests: their engine threads cancel them
  }
  impl_->wake.notify_all();
  for (auto& t : impl_->threads) t.join();
  for (auto& job : dropped) fail(job->callbacks, ErrorKind::shutting_down, "the server is shutting down");
}

std::shared_ptr<RequestHandle> EngineService::submit(RequestSpec request, StreamCallbacks callbacks) {
  auto job = std::make_shared<Job>();
  job->request = std::move(request);
  job->callbacks = std::move(callbacks);
  // The handle may outlive the service: it only reaches the queue through a weak pointer.
  std::weak_ptr<Impl> weak = impl_;
  job->dequeue = [weak](Job* j) {
    const auto impl = weak.lock();
    return impl && impl->remove_queued(j);
  };
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->stopping) {
      fail(job->callbacks, ErrorKind::shutting_down, "the server is shutting down");
      return job;
    }
    // Engines with free slots take queued requests at their next step, so those do not count
    // against the limit.
    if (static_cast<int64_t>(impl_->queue.size()) >= impl_->options.max_queue + impl_->free_slots()) {
      fail(job->callbacks, ErrorKind::overloaded,
           "the server is busy: " + std::to_string(impl_->queue.size()) +
               " requests are already waiting (limit " + std::to_string(impl_->options.max_queue) + ")");
      return job;
    }
    impl_->queue.push_back(job);
  }
  impl_->wake.notify_one();
  return job;
}

ServiceInfo EngineService::info() const { return impl_->info; }

std::vector<WorkerLoad> EngineService::load() const {
  std::vector<WorkerLoad> out;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  for (size_t i = 0; i < impl_->engines.size(); ++i) {
    WorkerLoad w;
    w.worker = "engine" + std::to_string(i);
    w.kv_tokens = impl_->kv_tokens[i]->load();
    w.active_requests = impl_->slots_used[i];
    if (impl_->engines[i]) w.context_cache = impl_->engines[i]->context_cache_metrics();
    out.push_back(w);
  }
  return out;
}

void EngineService::release_context(const std::string& context_id) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  for (const auto& e : impl_->engines)
    if (e) e->release_context(context_id);
}

std::optional<BatchCounters> EngineService::batching() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->counters;
}

int EngineService::queued() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return static_cast<int>(impl_->queue.size());
}

}  // namespace starattn::server
