// Fuzz target: the ARC header-field reading of filters/arc/arc_chain.h --
// split_header_block, arc_instance, arc_structure, relaxed_header,
// without_b_value, ams_signed_octets, seal_signed_octets, parse_auth_res.
// The input is a header section (what a client sends before the body).
//
// Asserts:
//  - a valid structure has 1..50 sets, each with its three fields, the
//    instance of each field being its set's position;
//  - a broken one has no sets and says why; no ARC field: neither;
//  - relaxed_header gives "name:value\r\n" with one CRLF, at the end, no
//    double space and no white space before the CRLF or after the colon;
//  - without_b_value never grows a field and is idempotent;
//  - the signed octets end without CRLF; parse_auth_res gives at most 64.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/arc/arc_chain.h"
#include "fuzz_util.h"

using postern::fuzz::escape;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto fields = postern::split_header_block(input);
  const postern::ArcStructure s = postern::arc_structure(fields);
  if (!s.error.empty()) {
    FUZZ_CHECK(s.sets.empty(), "  sets kept with an error: \"" + escape(input) + "\"");
  } else if (s.fields == 0) {
    FUZZ_CHECK(s.sets.empty(), "  sets without ARC fields: \"" + escape(input) + "\"");
  } else {
    FUZZ_CHECK(!s.sets.empty() && s.sets.size() <= postern::kArcMaxSets, "  bad set count: \"" + escape(input) + "\"");
    FUZZ_CHECK(s.fields == 3 * s.sets.size(), "  fields not all in sets: \"" + escape(input) + "\"");
    for (std::size_t i = 0; i < s.sets.size(); ++i) {
      for (int k = 0; k < 3; ++k) {
        const postern::HeaderField* f = s.sets[i][k];
        FUZZ_CHECK(f != nullptr, "  set without a field: \"" + escape(input) + "\"");
        auto inst = postern::arc_instance(static_cast<postern::ArcFieldKind>(k), f->value());
        FUZZ_CHECK(inst && *inst == i + 1, "  field in the wrong set: \"" + escape(input) + "\"");
      }
      const std::string seal = postern::seal_signed_octets(s.sets, i + 1);
      FUZZ_CHECK(!seal.ends_with("\r\n"), "  seal octets end with CRLF: \"" + escape(input) + "\"");
      auto ams = postern::ams_signed_octets(fields, *s.sets[i][1]);
      FUZZ_CHECK(!ams || !ams->ends_with("\r\n"), "  AMS octets end with CRLF: \"" + escape(input) + "\"");
    }
  }
  for (const auto& f : fields) {
    const std::string r = postern::relaxed_header(f.name, f.raw);
    FUZZ_CHECK(r.ends_with("\r\n") && r.find_first_of("\r\n") == r.size() - 2,
               "  relaxed field has inner line breaks: \"" + escape(r) + "\"");
    const std::size_t colon = r.find(':');
    FUZZ_CHECK(r.find("  ") == std::string::npos && r.find(" \r\n") == std::string::npos &&
                   colon != std::string::npos && r[colon + 1] != ' ',
               "  relaxed field keeps white space: \"" + escape(r) + "\"");
    const std::string nb = postern::without_b_value(f.raw);
    FUZZ_CHECK(nb.size() <= f.raw.size(), "  b= removal grew: \"" + escape(f.raw) + "\"");
    FUZZ_CHECK(postern::without_b_value(nb) == nb, "  b= removal not idempotent: \"" + escape(f.raw) + "\"");
    FUZZ_CHECK(postern::parse_auth_res(f.value()).size() <= 64, "  too many resinfos");
  }
  return 0;
}
