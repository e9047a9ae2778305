// libpq connection wrapper: statements with parameters, reconnecting,
// notifications, array literals.
#include "postgres/connection.hpp"

#include <libpq-fe.h>

#include <cstdlib>
#include <thread>

namespace ordo::detail::pg {

void Result::Free::operator()(pg_result* r) const noexcept { PQclear(r); }
int Result::rows() const noexcept { return PQntuples(r_.get()); }
bool Result::is_null(int row, int col) const noexcept { return PQgetisnull(r_.get(), row, col) != 0; }
std::string_view Result::text(int row, int col) const noexcept {
  return {PQgetvalue(r_.get(), row, col), static_cast<std::size_t>(PQgetlength(r_.get(), row, col))};
}
std::int64_t Result::int64(int row, int col) const {
  if (is_null(row, col)) return 0;
  return std::strtoll(PQgetvalue(r_.get(), row, col), nullptr, 10);
}
bool Result::boolean(int row, int col) const noexcept { return !is_null(row, col) && text(row, col) == "t"; }
std::int64_t Result::affected() const noexcept { return std::strtoll(PQcmdTuples(r_.get()), nullptr, 10); }

std::string Result::bytes(int row, int col) const {
  if (is_null(row, col)) return {};
  std::size_t n = 0;
  unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(r_.get(), row, col)), &n);
  if (raw == nullptr) throw StoreError("ordo: postgres: a bytea value could not be decoded");
  std::string out(reinterpret_cast<const char*>(raw), n);
  PQfreemem(raw);
  return out;
}

namespace {
constexpr const char* kDefaultConnectTimeoutSeconds = "10";
}  // namespace

Connection::Connection(std::string conninfo) : conninfo_(std::move(conninfo)) { connect(); }
Connection::~Connection() {
  if (conn_ != nullptr && owned_) PQfinish(conn_);
}

void Connection::connect() {
  if (conn_ != nullptr) PQfinish(conn_);
  // A default connect_timeout, placed before the conninfo so that one the
  // conninfo sets wins: without any, a server that takes the TCP connection
  // and never answers holds the connect (and every reconnect patience) for
  // ever. Expanding `dbname` accepts both key=value strings and URIs.
  const char* const keywords[] = {"connect_timeout", "dbname", nullptr};
  const char* const values[] = {kDefaultConnectTimeoutSeconds, conninfo_.c_str(), nullptr};
  conn_ = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string why = conn_ != nullptr ? PQerrorMessage(conn_) : "out of memory";
    while (!why.empty() && why.back() == '\n') why.pop_back();
    // A failed PGconn still holds its buffers, and a constructor that throws
    // from here never runs the destructor: every try against a server that
    // is restarting leaked one.
    PQfinish(conn_);
    conn_ = nullptr;
    throw StatementError("ordo: postgres: cannot connect: " + why, "");
  }
  // Notices (a schema that exists already, ...) are not the user's business.
  PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);
}

bool Connection::broken() const noexcept { return conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK; }
int Connection::socket() const noexcept { return conn_ != nullptr ? PQsocket(conn_) : -1; }

void Connection::reconnect(std::chrono::milliseconds patience) {
  if (!owned_) throw StoreError("ordo: postgres: the caller's connection is lost");
  const auto give_up = std::chrono::steady_clock::now() + patience;
  for (;;) {
    try {
      connect();
      return;
    } catch (const StoreError&) {
      if (std::chrono::steady_clock::now() >= give_up) throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the server is restarting: retry pacing
  }
}

namespace {

[[noreturn]] void fail(PGconn* conn, PGresult* r, const std::string& sql) {
  const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  std::string why = r != nullptr ? PQresultErrorMessage(r) : "";
  if (why.empty()) why = PQerrorMessage(conn);
  while (!why.empty() && why.back() == '\n') why.pop_back();
  std::string sqlstate = state != nullptr ? state : "";
  if (r != nullptr) PQclear(r);
  const std::string head = sql.substr(0, sql.find_first_of("(\n"));
  throw StatementError("ordo: postgres: " + why + " (in: " + head + ")", sqlstate);
}

}  // namespace

Result Connection::exec(const std::string& sql, const std::vector<Param>& params) {
  if (broken()) throw StatementError("ordo: postgres: the connection is lost", "");
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size());
  std::vector<int> formats(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    values[i] = params[i].is_null ? nullptr : params[i].value.data();
    lengths[i] = static_cast<int>(params[i].value.size());
    formats[i] = params[i].binary ? 1 : 0;
  }
  PGresult* r = PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr, values.data(),
                             lengths.data(), formats.data(), 0);
  const ExecStatusType status = r != nullptr ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) fail(conn_, r, sql);
  return Result(r);
}

void Connection::run_script(const std::string& sql) {
  if (broken()) throw StatementError("ordo: postgres: the connection is lost", "");
  PGresult* r = PQexec(conn_, sql.c_str());
  const ExecStatusType status = r != nullptr ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) fail(conn_, r, sql);
  PQclear(r);
}

bool Connection::drain_notifications() {
  if (broken()) return false;
  if (PQconsumeInput(conn_) == 0) return false;  // broken() tells the caller
  bool any = false;
  while (PGnotify* n = PQnotifies(conn_)) {
    any = true;
    PQfreemem(n);
  }
  return any;
}

namespace {

void append_quoted(std::string& out, std::string_view text) {
  out += '"';
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

}  // namespace

std::string array_literal(const std::vector<std::string>& texts) {
  std::string out = "{";
  for (std::size_t i = 0; i < texts.size(); ++i) {
    if (i) out += ',';
    append_quoted(out, texts[i]);
  }
  return out + "}";
}

std::string array_literal(const std::vector<std::optional<std::string>>& texts) {
  std::string out = "{";
  for (std::size_t i = 0; i < texts.size(); ++i) {
    if (i) out += ',';
    if (texts[i]) {
      append_quoted(out, *texts[i]);
    } else {
      out += "NULL";
    }
  }
  return out + "}";
}

std::string int_array_literal(const std::vector<std::int64_t>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(values[i]);
  }
  return out + "}";
}

std::string bytea_hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out = "\\x";
  out.reserve(2 + bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string checked_identifier(const std::string& name, const char* what) {
  bool ok = !name.empty() && name.size() <= 48 && (name[0] == '_' || (name[0] >= 'a' && name[0] <= 'z'));
  for (char c : name) ok = ok && (c == '_' || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'));
  if (!ok) {
    throw InvalidArgument(std::string("ordo: ") + what + " '" + name +
                          "' must be lower-case letters, digits and '_' (at most 48), starting with a letter or '_'");
  }
  return name;
}

}  // namespace ordo::detail::pg
