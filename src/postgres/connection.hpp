// One libpq connection and its results, for the PostgreSQL store.
//
// Thread-safety: a Connection is used by one thread at a time (its owner
// serialises; libpq connections are not shared). Result is a value.
//
// Errors: every failure throws StoreError carrying the server's message and
// SQLSTATE. After a failure broken() says whether the connection itself is
// lost (then reconnect() before anything else) or only the statement failed.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ordo/errors.hpp"

struct pg_conn;
struct pg_result;

namespace ordo::detail::pg {

// A statement's failure, with its SQLSTATE ("" when the connection broke).
class StatementError : public StoreError {
 public:
  StatementError(const std::string& what, std::string sqlstate) : StoreError(what), sqlstate_(std::move(sqlstate)) {}
  const std::string& sqlstate() const noexcept { return sqlstate_; }
  // A deadlock or serialisation failure: the same statement may simply be run again.
  bool transient() const noexcept { return sqlstate_ == "40P01" || sqlstate_ == "40001"; }

 private:
  std::string sqlstate_;
};

// A statement parameter: text, bytes (sent in binary) or NULL.
struct Param {
  std::string value;
  bool is_null = false;
  bool binary = false;
  static Param null() { return Param{{}, true, false}; }
  static Param bytes(std::string_view b) { return Param{std::string(b), false, true}; }
  Param() = default;
  Param(std::string v, bool n, bool b) : value(std::move(v)), is_null(n), binary(b) {}
  Param(std::string v) : value(std::move(v)) {}  // NOLINT: text is the common case
  Param(const char* v) : value(v) {}             // NOLINT
  Param(std::int64_t v) : value(std::to_string(v)) {}  // NOLINT
};

class Result {
 public:
  explicit Result(pg_result* r) noexcept : r_(r) {}
  int rows() const noexcept;
  bool is_null(int row, int col) const noexcept;
  std::string_view text(int row, int col) const noexcept;
  std::int64_t int64(int row, int col) const;  // 0 when NULL
  bool boolean(int row, int col) const noexcept;
  // A bytea column (hex text output) as bytes.
  std::string bytes(int row, int col) const;
  // Rows a command touched (UPDATE/DELETE/INSERT).
  std::int64_t affected() const noexcept;

 private:
  struct Free {
    void operator()(pg_result* r) const noexcept;
  };
  std::unique_ptr<pg_result, Free> r_;
};

class Connection {
 public:
  // Connects; throws StoreError naming the server's refusal.
  explicit Connection(std::string conninfo);
  // Wraps a connection the caller owns (and keeps open): never closed here.
  static Connection borrow(pg_conn* conn) { return Connection(conn); }
  Connection(Connection&& other) noexcept
      : conninfo_(std::move(other.conninfo_)), conn_(std::exchange(other.conn_, nullptr)), owned_(other.owned_) {}
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Result exec(const std::string& sql, const std::vector<Param>& params = {});
  // Several statements without parameters (schema scripts, BEGIN...).
  void run_script(const std::string& sql);
  bool broken() const noexcept;
  // Drops the connection and connects again, retrying every 100 ms up to
  // `patience`; throws StoreError when it could not.
  void reconnect(std::chrono::milliseconds patience);
  int socket() const noexcept;
  // Reads what the server sent and consumes every notification queued;
  // true if any arrived. Never blocks.
  bool drain_notifications();
  pg_conn* raw() noexcept { return conn_; }

 private:
  explicit Connection(pg_conn* borrowed) noexcept : conn_(borrowed), owned_(false) {}
  void connect();
  std::string conninfo_;
  pg_conn* conn_ = nullptr;
  bool owned_ = true;
};

// Runs `step` on `conn`, reconnecting and running it again while the
// connection is what failed (or a deadlock chose it), for up to `patience`;
// the step must be safe to repeat. A statement error is thrown at once.
template <class Step>
auto with_reconnect(Connection& conn, std::chrono::milliseconds patience, Step&& step) -> decltype(step()) {
  const auto give_up = std::chrono::steady_clock::now() + patience;
  for (;;) {
    try {
      if (conn.broken()) conn.reconnect(patience);
      return step();
    } catch (const StatementError& e) {
      if ((!conn.broken() && !e.transient()) || std::chrono::steady_clock::now() >= give_up) throw;
    }
  }
}

// PostgreSQL array literals, for sending a batch as one parameter.
std::string array_literal(const std::vector<std::string>& texts);
std::string array_literal(const std::vector<std::optional<std::string>>& texts);
std::string int_array_literal(const std::vector<std::int64_t>& values);
// A bytea array element in hex form ("\\x0a1b...").
std::string bytea_hex(std::string_view bytes);
// A bare identifier: [a-z_][a-z0-9_]*, at most 48 bytes. Throws InvalidArgument naming it.
std::string checked_identifier(const std::string& name, const char* what);

}  // namespace ordo::detail::pg
