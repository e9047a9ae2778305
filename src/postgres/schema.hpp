// The PostgreSQL store's schema: versioned migrations, applied by the library
// (docs/postgres.md lists the tables and what each guarantee rests on).
#pragma once

#include <string>

#include "postgres/connection.hpp"

namespace ordo::detail::pg {

// The newest schema version this ordo knows.
inline constexpr int kSchemaVersion = 1;

// Creates `schema` and brings it to kSchemaVersion, in one transaction under
// an advisory lock (processes starting together migrate once). Throws
// StoreError when the database's schema is newer than this ordo.
void migrate(Connection& conn, const std::string& schema);

// `sql` with @S replaced by the schema and @C by the notification channel.
std::string in_schema(std::string sql, const std::string& schema);

}  // namespace ordo::detail::pg
