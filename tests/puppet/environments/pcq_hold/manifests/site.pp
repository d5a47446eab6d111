# The pool-gate test's other traffic: a node of this environment holds the
# JRuby compiling it for `hold_seconds` (as agents' own catalog requests
# hold the pool beside pcq's compiles).
node default {
  $held = hold::seconds($facts['hold_seconds'])
  notify { "held ${held} s": }
}
