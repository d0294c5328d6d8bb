# Writes OUTPUT (revision.h) with the git revision of SOURCE_DIR ("" outside git):
# `git describe --always --dirty`, so a build from a changed tree says so.
# Run at every build; the file is rewritten only when its content changes.
set(revision "")
find_program(GIT git)
if(GIT AND EXISTS "${SOURCE_DIR}/.git")
  execute_process(COMMAND ${GIT} -C "${SOURCE_DIR}" describe --always --dirty --abbrev=12
                  OUTPUT_VARIABLE revision OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE failed ERROR_QUIET)
  if(failed)
    set(revision "")
  endif()
endif()
set(content "// Generated at build time by cmake/revision.cmake.\n#pragma once\nnamespace postern {\ninline constexpr const char* kRevision = \"${revision}\";\n}\n")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" old)
endif()
if(NOT old STREQUAL content)
  file(WRITE "${OUTPUT}" "${content}")
endif()
