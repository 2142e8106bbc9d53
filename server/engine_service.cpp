#include "server/engine_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "runtime/chat_template.h"
#include "runtime/prompt.h"

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

}  // namespace

struct EngineService::Impl : std::enable_shared_from_this<Impl> {
  EngineServiceOptions options;
  std::vector<std::unique_ptr<Engine>> engines;
  ChatTemplate chat_template;
  std::string model_name;
  ServiceInfo info;

  mutable std::mutex mutex;
  std::condition_variable wake;
  std::deque<std::shared_ptr<Job>> queue;
  bool stopping = false;
  std::vector<std::shared_ptr<Job>> running;  // per engine; null when idle
  std::vector<std::unique_ptr<std::atomic<int64_t>>> kv_tokens;  // per engine
  std::vector<std::thread> threads;

  bool remove_queued(Job* job) {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = std::find_if(queue.begin(), queue.end(),
                                 [&](const std::shared_ptr<Job>& j) { return j.get() == job; });
    if (it == queue.end()) return false;
    queue.erase(it);
    return true;
  }

  void worker_loop(size_t index) {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex);
        wake.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) return;
        job = std::move(queue.front());
        queue.pop_front();
        running[index] = job;
      }
      run(index, *job);
      std::lock_guard<std::mutex> lock(mutex);
      running[index].reset();
    }
  }

  void run(size_t index, Job& job) {
    Engine& engine = *engines[index];
    const auto started = Clock::now();
    std::atomic<int64_t>& kv = *kv_tokens[index];
    if (job.cancelled) {  // cancelled between leaving the queue and starting
      RequestStats c;
      c.finish_reason = "cancelled";
      c.queue_ms = ms_between(job.submitted, started);
      job.callbacks.on_done(c);
      return;
    }
    try {
      // The same layouts as the head's scheduler and `starattn run` (runtime/prompt.h), so a
      // request gets the same tokens whichever front end serves it; laid out here to check
      // the server's context limit, then handed to the engine as ids.
      RequestSpec g = job.request;
      PromptIds p = resolve_prompt(g.prompt, engine.tokenizer(), engine.chat_template(),
                                   chat_template, engine.config().bos_token_id);
      const int64_t limit = options.max_context_tokens;
      if (limit > 0 && static_cast<int64_t>(p.context.size()) > limit)
        throw Error(ErrorKind::capacity,
                    "context of " + std::to_string(p.context.size()) +
                        " tokens is larger than this server's limit of " + std::to_string(limit) +
                        " context tokens");
      g.prompt = PromptSpec();
      g.prompt.context = std::move(p.context);
      g.prompt.query = std::move(p.query);

      kv = static_cast<int64_t>(g.prompt.context.size() + g.prompt.query.size());
      bool client_cancelled = false;
      // Stop strings, stop ids and max_tokens are applied by the Engine's Generation.
      RequestStats s = engine.generate(g, [&](const GeneratedToken& t) {
        ++kv;
        if (job.cancelled) {
          client_cancelled = true;
          return false;
        }
        TokenEvent ev;
        ev.text = t.text;
        ev.tokens.push_back(t.token);
        if (t.logprob) ev.logprobs.push_back(*t.logprob);
        if (t.logits) ev.logits.assign(t.logits, t.logits + engine.config().vocab_size);
        if (!job.callbacks.on_token(ev)) {
          job.cancelled = true;
          client_cancelled = true;
          return false;
        }
        return true;
      });
      kv = 0;
      if (!client_cancelled && !s.text_tail.empty()) {
        TokenEvent tail;
        tail.text = s.text_tail;
        job.callbacks.on_token(tail);
      }
      if (client_cancelled) s.finish_reason = "cancelled";
      s.text_tail.clear();  // streamed above
      s.queue_ms = ms_between(job.submitted, started);
      job.callbacks.on_done(s);
    } catch (const std::exception& e) {
      kv = 0;
      const ErrorKind kind = kind_of(e);
      fail(job.callbacks, kind,
           kind == ErrorKind::internal ? std::string("generation failed: ") + e.what() : e.what());
    }
  }
};

EngineService::EngineService(const EngineServiceOptions& options) : impl_(std::make_shared<Impl>()) {
  if (options.engines < 1)
    throw std::invalid_argument("engines must be at least 1, got " + std::to_string(options.engines));
  if (options.max_queue < 0)
    throw std::invalid_argument("max_queue must not be negative");
  Impl& s = *impl_;
  s.options = options;
  // Each engine is built on the thread that will run it: a GPU backend binds its device to the
  // thread that creates it, and every later call must come from that thread.
  const size_t n = static_cast<size_t>(options.engines);
  s.engines.resize(n);
  s.running.resize(n);
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
    dropped.swap(impl_->queue);
    for (auto& job : impl_->running)
      if (job) job->cancelled = true;
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
    // Idle engines take queued requests at once, so they do not count against the limit.
    const auto idle = std::count(impl_->running.begin(), impl_->running.end(), nullptr);
    if (static_cast<int64_t>(impl_->queue.size()) >= impl_->options.max_queue + idle) {
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
    w.active_requests = impl_->running[i] ? 1 : 0;
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

int EngineService::queued() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return static_cast<int>(impl_->queue.size());
}

}  // namespace starattn::server
