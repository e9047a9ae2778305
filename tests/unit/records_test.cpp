// The durable-record codec (src/journal/records.hpp): every record type
// decodes to what was encoded, random records included; a payload cut
// anywhere inside its fields is JournalCorruption naming the record, never a
// read past its end; bytes after the known fields are ignored.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "journal/records.hpp"
#include "test_support.hpp"

namespace ordo::detail::records {
namespace {

namespace test = ordo::test;

// A record as the reader hands it over: the task id, then the body.
struct Framed {
  std::string bytes;
  RecordView view(RecordType type, std::uint64_t task) const {
    return {type, task, {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()}, 1, 32, false};
  }
};

Framed frame(std::uint64_t task, const PayloadWriter& body) {
  Framed f;
  for (int i = 0; i < 8; ++i) f.bytes.push_back(static_cast<char>(task >> (8 * i)));
  f.bytes.append(reinterpret_cast<const char*>(body.view().data()), body.view().size());
  return f;
}

std::string random_text(std::mt19937_64& rng, std::size_t max) {
  std::string s(rng() % (max + 1), '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Every cut of `f` inside its fields throws JournalCorruption naming the record.
void expect_every_cut_throws(const Framed& f, RecordType type, std::size_t fields_end,
                             const std::function<void(const RecordView&)>& decode) {
  for (std::size_t cut = 8; cut < fields_end; ++cut) {
    Framed shorter{f.bytes.substr(0, cut)};
    try {
      decode(shorter.view(type, 7));
      ADD_FAILURE() << to_string(type) << " cut to " << cut << " of " << fields_end << " bytes decoded";
    } catch (const JournalCorruption& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(to_string(type)) + " record of task 7"), std::string::npos)
          << e.what();
    }
  }
}

TEST(Records, RandomEnqueuesRoundTripAndEveryCutIsCorruption) {
  std::mt19937_64 rng(12);
  for (std::size_t i = 0; i < 40 * test::kScale; ++i) {  // kScale: see RandomBytesDecodeOrAre... below
    std::vector<std::string> groups;
    for (std::size_t n = rng() % 4; n > 0; --n) groups.push_back(random_text(rng, 20));
    const std::string type = random_text(rng, 30), key = random_text(rng, 30), args = random_text(rng, 100);
    Enqueue in{.type = type, .level = static_cast<std::uint8_t>(rng()), .max_attempts = static_cast<std::uint32_t>(rng()),
               .run_at_ns = static_cast<std::int64_t>(rng()), .key = key, .needs = {},
               .workflow = rng(), .node = static_cast<std::uint32_t>(rng()), .args = args};
    for (const std::string& g : groups) in.needs.push_back({g, rng()});
    const Framed f = frame(7, encode(in));
    const Enqueue out = decode_enqueue(f.view(RecordType::enqueue, 7));
    EXPECT_EQ(out.type, in.type);
    EXPECT_EQ(out.level, in.level);
    EXPECT_EQ(out.max_attempts, in.max_attempts);
    EXPECT_EQ(out.run_at_ns, in.run_at_ns);
    EXPECT_EQ(out.key, in.key);
    ASSERT_EQ(out.needs.size(), in.needs.size());
    for (std::size_t n = 0; n < in.needs.size(); ++n) {
      EXPECT_EQ(out.needs[n].group, in.needs[n].group);
      EXPECT_EQ(out.needs[n].amount, in.needs[n].amount);
    }
    EXPECT_EQ(out.workflow, in.workflow);
    EXPECT_EQ(out.node, in.node);
    EXPECT_EQ(out.args, in.args);
    expect_every_cut_throws(f, RecordType::enqueue, f.bytes.size() - args.size(),
                            [](const RecordView& r) { decode_enqueue(r); });
  }
}

TEST(Records, EveryOtherRecordTypeRoundTrips) {
  std::mt19937_64 rng(34);
  for (std::size_t i = 0; i < 25 * test::kScale; ++i) {
    const auto attempt = static_cast<std::uint32_t>(rng());
    const auto when = static_cast<std::int64_t>(rng());
    const std::string text = random_text(rng, 40), name = random_text(rng, 20);

    const Framed start = frame(7, encode(Start{attempt}));
    EXPECT_EQ(decode_start(start.view(RecordType::start, 7)).attempt, attempt);
    expect_every_cut_throws(start, RecordType::start, start.bytes.size(), [](const RecordView& r) { decode_start(r); });

    const Framed complete = frame(7, encode(Complete{when, text}));
    const Complete c = decode_complete(complete.view(RecordType::complete, 7));
    EXPECT_EQ(c.retain_until_ns, when);
    EXPECT_EQ(c.key, text);
    expect_every_cut_throws(complete, RecordType::complete, complete.bytes.size(),
                            [](const RecordView& r) { decode_complete(r); });

    const Framed fail = frame(7, encode(Fail{attempt, when, text}));
    const Fail f = decode_fail(fail.view(RecordType::fail, 7));
    EXPECT_EQ(f.attempt, attempt);
    EXPECT_EQ(f.retry_at_ns, when);
    EXPECT_EQ(f.error, text);
    expect_every_cut_throws(fail, RecordType::fail, fail.bytes.size(), [](const RecordView& r) { decode_fail(r); });

    const Framed dead = frame(7, encode(Dead{attempt, text}));
    const Dead d = decode_dead(dead.view(RecordType::dead, 7));
    EXPECT_EQ(d.attempts, attempt);
    EXPECT_EQ(d.reason, text);
    expect_every_cut_throws(dead, RecordType::dead, dead.bytes.size(), [](const RecordView& r) { decode_dead(r); });

    WorkflowCheckpoint cp;
    for (std::size_t n = rng() % 5; n > 0; --n) cp.discarded.push_back(static_cast<std::uint32_t>(rng()));
    const Framed checkpoint = frame(7, encode(cp));
    EXPECT_EQ(decode_workflow_checkpoint(checkpoint.view(RecordType::checkpoint, 7)).discarded, cp.discarded);
    expect_every_cut_throws(checkpoint, RecordType::checkpoint, checkpoint.bytes.size(),
                            [](const RecordView& r) { decode_workflow_checkpoint(r); });

    const std::size_t nodes = 1 + rng() % 5;
    std::vector<std::string> names, types;
    for (std::size_t n = 0; n < nodes; ++n) {
      names.push_back(random_text(rng, 10));
      types.push_back(random_text(rng, 10));
    }
    Workflow w{.name = name, .key = text, .nodes = {}, .edges = {}};
    for (std::size_t n = 0; n < nodes; ++n) w.nodes.push_back({names[n], types[n]});
    for (std::size_t e = rng() % 6; e > 0; --e) {
      w.edges.push_back({static_cast<std::uint32_t>(rng() % nodes), static_cast<std::uint32_t>(rng() % nodes)});
    }
    const Framed workflow = frame(7, encode(w));
    const Workflow back = decode_workflow(workflow.view(RecordType::workflow, 7));
    EXPECT_EQ(back.name, w.name);
    EXPECT_EQ(back.key, w.key);
    ASSERT_EQ(back.nodes.size(), nodes);
    for (std::size_t n = 0; n < nodes; ++n) {
      EXPECT_EQ(back.nodes[n].name, names[n]);
      EXPECT_EQ(back.nodes[n].type, types[n]);
    }
    ASSERT_EQ(back.edges.size(), w.edges.size());
    for (std::size_t e = 0; e < w.edges.size(); ++e) {
      EXPECT_EQ(back.edges[e].from, w.edges[e].from);
      EXPECT_EQ(back.edges[e].to, w.edges[e].to);
    }
    expect_every_cut_throws(workflow, RecordType::workflow, workflow.bytes.size(),
                            [](const RecordView& r) { decode_workflow(r); });
  }
}

// Random bytes: every decoder either decodes them or throws JournalCorruption
// (under ASan, a read past the payload would be a failure too).
TEST(Records, RandomBytesDecodeOrAreCorruptionNeverAnythingElse) {
  std::mt19937_64 rng(56);
  const std::vector<std::pair<RecordType, std::function<void(const RecordView&)>>> decoders = {
      {RecordType::enqueue, [](const RecordView& r) { decode_enqueue(r); }},
      {RecordType::start, [](const RecordView& r) { decode_start(r); }},
      {RecordType::checkpoint, [](const RecordView& r) { decode_workflow_checkpoint(r); }},
      {RecordType::complete, [](const RecordView& r) { decode_complete(r); }},
      {RecordType::fail, [](const RecordView& r) { decode_fail(r); }},
      {RecordType::dead, [](const RecordView& r) { decode_dead(r); }},
      {RecordType::workflow, [](const RecordView& r) { decode_workflow(r); }},
  };
  std::size_t decoded = 0, refused = 0;
  // Fewer under sanitizers (kScale): there every throw costs ThreadSanitizer
  // memory it does not give back, some 100 KB each.
  for (std::size_t i = 0; i < 300 * test::kScale; ++i) {
    Framed f{std::string(8, '\0') + random_text(rng, 24)};
    for (const auto& [type, decode] : decoders) {
      try {
        decode(f.view(type, 0));
        ++decoded;
      } catch (const JournalCorruption&) {
        ++refused;
      }
    }
  }
  EXPECT_GT(decoded, 0u);
  EXPECT_GT(refused, 0u);
}

TEST(Records, ATaskCheckpointIsEveryByteAfterTheId) {
  PayloadWriter body;
  body.tail(std::string("\0progress\xff", 10));
  const Framed f = frame(7, body);
  EXPECT_EQ(decode_task_checkpoint(f.view(RecordType::checkpoint, 7)), std::string("\0progress\xff", 10));
}

TEST(Records, BytesAfterTheKnownFieldsAreIgnored) {
  Framed f = frame(7, encode(Dead{3, "gone"}));
  f.bytes += "a field a later version added";
  const Dead d = decode_dead(f.view(RecordType::dead, 7));
  EXPECT_EQ(d.attempts, 3u);
  EXPECT_EQ(d.reason, "gone");
}

// Compaction keeps a COMPLETE as a tombstone only while its time lies ahead;
// the journal's own users may write COMPLETEs without that field.
TEST(Records, ACompleteRetainsItsKeyOnlyBeforeItsTimeAndAShortOneNever) {
  const Framed f = frame(7, encode(Complete{1000, "k"}));
  EXPECT_TRUE(retains_key_beyond(f.view(RecordType::complete, 7), 999));
  EXPECT_FALSE(retains_key_beyond(f.view(RecordType::complete, 7), 1000));
  const Framed bare = frame(7, PayloadWriter{});
  EXPECT_FALSE(retains_key_beyond(bare.view(RecordType::complete, 7), 0));
}

TEST(Records, AWorkflowEdgeToANodeItDoesNotHaveIsCorruption) {
  const Workflow w{.name = "w", .key = "", .nodes = {{"a", "t"}}, .edges = {{0, 1}}};
  const Framed f = frame(7, encode(w));
  EXPECT_THROW(decode_workflow(f.view(RecordType::workflow, 7)), JournalCorruption);
}

TEST(Records, FreeTextIsCutTo65535BytesAndTheLengthSaysSo) {
  const std::string huge(70'000, 'e');
  const Framed f = frame(7, encode(Fail{1, 2, huge}));
  const Fail back = decode_fail(f.view(RecordType::fail, 7));
  EXPECT_EQ(back.error.size(), kMaxStr16);
  EXPECT_EQ(f.bytes.size(), 8u + 4 + 8 + 2 + kMaxStr16);
}

TEST(Records, ANameOf64KiBOrMoreIsRefusedNamingTheField) {
  try {
    check_str16(std::string(70'000, 'k'), "the idempotency key");
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("the idempotency key is 70000 bytes"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ordo::detail::records
