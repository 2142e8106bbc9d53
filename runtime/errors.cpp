#include "runtime/errors.h"

namespace starattn {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_request: return "invalid_request";
    case ErrorKind::capacity: return "capacity";
    case ErrorKind::overloaded: return "overloaded";
    case ErrorKind::shutting_down: return "shutting_down";
    case ErrorKind::worker_failed: return "worker_failed";
    case ErrorKind::timeout: return "timeout";
    case ErrorKind::internal: return "internal";
  }
  return "internal";
}

ErrorKind error_kind_from_name(const std::string& name) {
  for (ErrorKind k : {ErrorKind::invalid_request, ErrorKind::capacity, ErrorKind::overloaded,
                      ErrorKind::shutting_down, ErrorKind::worker_failed, ErrorKind::timeout})
    if (name == error_kind_name(k)) return k;
  return ErrorKind::internal;
}

ErrorReport report_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return {x.what(), kind_of(x)};
  } catch (...) {
    return {"unknown error", ErrorKind::internal};
  }
}

ErrorKind kind_of(const std::exception& e) {
  if (const auto* err = dynamic_cast<const Error*>(&e)) return err->kind();
  if (dynamic_cast<const std::invalid_argument*>(&e)) return ErrorKind::invalid_request;
  return ErrorKind::internal;
}

}  // namespace starattn
