// One vocabulary of failure kinds for every path that runs a request: the in-process Engine, the
// actors, and the front ends that map a kind to an HTTP status or a framed-TCP error code.
//
// Code that refuses a request throws starattn::Error with its kind, so the kind travels with the
// message instead of being guessed from an exception class (a std::length_error from the STL is
// a bug, not a "context too long").
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

namespace starattn {

enum class ErrorKind {
  invalid_request,  // bad field values (mode, block sizes, empty query, ids outside the vocabulary)
  capacity,         // the context (plus query and max_tokens) does not fit: KV memory or positions
  overloaded,       // the queue is full or no worker can take it; try again later
  shutting_down,    // the service is stopping
  worker_failed,    // a context worker died or refused during the request
  timeout,          // a worker or the request's deadline ran out
  internal,         // anything else: a bug or a backend failure
};

// "invalid_request", "capacity", ... (stable: clients and the framed protocol see these names).
const char* error_kind_name(ErrorKind kind);
// The inverse; unknown names give ErrorKind::internal.
ErrorKind error_kind_from_name(const std::string& name);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// The kind of any exception: an Error's own, std::invalid_argument as invalid_request, anything
// else internal.
ErrorKind kind_of(const std::exception& e);

// The message and kind of an exception held as an exception_ptr (one not derived from
// std::exception: "unknown error", internal).
struct ErrorReport {
  std::string message;
  ErrorKind kind = ErrorKind::internal;
};
ErrorReport report_of(const std::exception_ptr& e);

}  // namespace starattn
