// The POSIX side of the journal's FileSystem (file_system.hpp): every
// failure becomes a JournalIoError naming the call, the path and errno's text.
// Thread-safety: see FileSystem.
#pragma once

#include <string>

#include "journal/file_system.hpp"

namespace ordo::detail::wal {

[[noreturn]] void throw_io(const char* call, const std::string& path);

inline std::string join(const std::string& dir, const std::string& name) { return join_path(dir, name); }

}  // namespace ordo::detail::wal
