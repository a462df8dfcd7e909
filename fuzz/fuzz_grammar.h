// Shared by the ScanGrammar and TokenGrammar harnesses.
#pragma once

#include "scan_automaton.h"

// The automaton of 16x16 (i == 0) or 32x32 (i != 0) images, built once per process.
inline const jpeglm::ScanGrammar& fuzz_grammar(int i) {
  static const jpeglm::ScanGrammar g16(16, 16), g32(32, 32);
  return i ? g32 : g16;
}
