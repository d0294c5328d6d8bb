
TEST_CASE("a multi-line verdict text becomes a multi-line reply, each line cleaned", "[milter][verdict]") {
  Verdict v{Verdict::Action::kReject, 554, "5.7.1", "virus found\nsecond\x01line", "milter"};
  Reply r = verdict_reply(v, Stage::kEom);
  CHECK(r.code == 554);
  CHECK(r.text == "5.7.1 virus found\n5.7.1 second line");
  std::string many;
  for (int i = 0; i < 30; ++i) many += "l\n";
  CHECK(std::count(verdict_reply(Verdict{Verdict::Action::kTempfail, 451, "", many, ""}, Stage::kEom).text.begin(),
                   verdict_reply(Verdict{Verdict::Action::kTempfail, 451, "", many, ""}, Stage::kEom).text.end(),
                   '\n') == 9);
}
