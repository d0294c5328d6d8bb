// UTF-8 well-formedness (RFC 3629 §4), and one walk over text that may not
// be UTF-8: each well-formed sequence, or one ill-formed octet at a time,
// for the writers that escape text for JSON, HTML, XML or a terminal.
// I/O-free.
#pragma once

#include <cstddef>
#include <iterator>
#include <string_view>

namespace postern {

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629 §4: no
// overlongs, no surrogates, nothing past U+10FFFF); 0 when ill-formed or ASCII.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i);

// True when every octet of `s` is ASCII or part of a well-formed UTF-8
// sequence (RFC 3629 §4): no overlong form, surrogate, code point past
// U+10FFFF, lone continuation octet or truncated sequence.
bool valid_utf8(std::string_view s);

namespace utf8 {

inline constexpr char32_t kReplacement = 0xfffd;  // U+FFFD REPLACEMENT CHARACTER

// One step of the walk: an ASCII octet, a well-formed multi-octet sequence,
// or a single octet that begins none (an overlong, a surrogate, a truncated
// sequence, a code point past U+10FFFF, a stray continuation octet), which
// stands for U+FFFD. After an ill-formed octet the walk goes on at the next
// octet, so every octet of a bad sequence is one U+FFFD of its own.
struct Unit {
  std::string_view octets;  // the sequence as it stands in the text; one octet when ill-formed
  char32_t code_point = kReplacement;
  bool well_formed = false;

  bool ascii() const { return well_formed && code_point < 0x80; }
};

// The Unit at s[i] (i < s.size()).
Unit unit_at(std::string_view s, std::size_t i);

// The text as Units, for a range-for:
//   for (const utf8::Unit& u : utf8::Units(text)) { ... }
class Units {
 public:
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Unit;
    using difference_type = std::ptrdiff_t;
    using pointer = const Unit*;
    using reference = const Unit&;

    iterator() = default;
    iterator(std::string_view s, std::size_t i) : s_(s), i_(i) { load(); }
    const Unit& operator*() const { return unit_; }
    const Unit* operator->() const { return &unit_; }
    iterator& operator++() {
      i_ += unit_.octets.size();
      load();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(const iterator& o) const { return i_ == o.i_; }

   private:
    void load() {
      if (i_ < s_.size()) unit_ = unit_at(s_, i_);
    }
    std::string_view s_;
    std::size_t i_ = 0;
    Unit unit_;
  };

  explicit Units(std::string_view s) : s_(s) {}
  iterator begin() const { return iterator(s_, 0); }
  iterator end() const { return iterator(s_, s_.size()); }

 private:
  std::string_view s_;
};

}  // namespace utf8
}  // namespace postern
