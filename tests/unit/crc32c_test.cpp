#include "journal/crc32c.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace ordo::detail {
namespace {

std::uint32_t both(const std::string& s) {
  const std::uint32_t fast = crc32c::value(s.data(), s.size());
  EXPECT_EQ(fast, crc32c::extend_portable(0, s.data(), s.size()));
  return fast;
}

TEST(Crc32c, KnownVectors) {
  // The check value of CRC-32C, and the test patterns of RFC 3720 (iSCSI), B.4.
  EXPECT_EQ(both("123456789"), 0xe3069283u);
  EXPECT_EQ(both(std::string(32, '\0')), 0x8a9136aau);
  EXPECT_EQ(both(std::string(32, '\xff')), 0x62a8ab43u);
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending.push_back(static_cast<char>(i));
    descending.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(both(ascending), 0x46dd794eu);
  EXPECT_EQ(both(descending), 0x113fdb5cu);
  EXPECT_EQ(both(""), 0u);
}

TEST(Crc32c, HardwareAndTableAgreeOnEveryLengthAndAlignment) {
  std::mt19937 rng(7);
  std::vector<unsigned char> data(4096 + 16);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  for (std::size_t start = 0; start < 16; ++start) {
    for (std::size_t n = 0; n < 300; ++n) {
      ASSERT_EQ(crc32c::value(data.data() + start, n), crc32c::extend_portable(0, data.data() + start, n))
          << "start " << start << " length " << n;
    }
  }
}

TEST(Crc32c, ExtendingEqualsOneCall) {
  const std::string s = "the journal frames every record with a checksum";
  for (std::size_t cut = 0; cut <= s.size(); ++cut) {
    const std::uint32_t first = crc32c::value(s.data(), cut);
    EXPECT_EQ(crc32c::extend(first, s.data() + cut, s.size() - cut), crc32c::value(s.data(), s.size()));
  }
}

TEST(Crc32c, MaskIsReversibleAndChangesTheValue) {
  for (std::uint32_t v : {0u, 1u, 0xe3069283u, 0xffffffffu, 0x80000000u}) {
    EXPECT_EQ(crc32c::unmask(crc32c::mask(v)), v);
    EXPECT_NE(crc32c::mask(v), v);
  }
}

}  // namespace
}  // namespace ordo::detail
