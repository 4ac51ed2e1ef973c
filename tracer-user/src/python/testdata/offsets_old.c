/* Offsets of CPython 3.9/3.10 structures (see the note at the end). */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "frameobject.h"
#include <stdio.h>
#define P(name, expr) printf("%-40s %zu\n", name, (size_t)(expr))
int main(void) {
  printf("PY_VERSION %s\n", PY_VERSION);
  P("runtime.interpreters.head", offsetof(_PyRuntimeState, interpreters.head));
  P("interp.next", offsetof(PyInterpreterState, next));
  P("interp.tstate_head", offsetof(PyInterpreterState, tstate_head));
  P("tstate.next", offsetof(PyThreadState, next));
  P("tstate.frame", offsetof(PyThreadState, frame));
  P("tstate.thread_id", offsetof(PyThreadState, thread_id));
  P("frame.f_back", offsetof(PyFrameObject, f_back));
  P("frame.f_code", offsetof(PyFrameObject, f_code));
  P("frame.f_lasti", offsetof(PyFrameObject, f_lasti));
  P("sizeof(frame)", sizeof(PyFrameObject));
  P("code.ob_type", offsetof(PyCodeObject, ob_base.ob_type));
  P("code.co_firstlineno", offsetof(PyCodeObject, co_firstlineno));
  P("code.co_code", offsetof(PyCodeObject, co_code));
  P("code.co_filename", offsetof(PyCodeObject, co_filename));
  P("code.co_name", offsetof(PyCodeObject, co_name));
#if PY_MINOR_VERSION >= 10
  P("code.co_linetable", offsetof(PyCodeObject, co_linetable));
#else
  P("code.co_lnotab", offsetof(PyCodeObject, co_lnotab));
#endif
  P("sizeof(code)", sizeof(PyCodeObject));
  P("bytes.ob_size", offsetof(PyBytesObject, ob_base.ob_size));
  P("bytes.ob_sval", offsetof(PyBytesObject, ob_sval));
  P("unicode.length", offsetof(PyASCIIObject, length));
  P("unicode.state", offsetof(PyASCIIObject, state));
  P("sizeof(PyASCIIObject)", sizeof(PyASCIIObject));
  P("sizeof(PyCompactUnicodeObject)", sizeof(PyCompactUnicodeObject));
  PyASCIIObject a; memset(&a, 0, sizeof a);
  a.state.kind = 7; printf("state.kind mask %#x\n", *(unsigned int*)&a.state);
  memset(&a, 0, sizeof a); a.state.compact = 1; printf("state.compact mask %#x\n", *(unsigned int*)&a.state);
  memset(&a, 0, sizeof a); a.state.ascii = 1; printf("state.ascii mask %#x\n", *(unsigned int*)&a.state);
  return 0;
}

/* Prints the offsets in offsets39.rs and offsets310.rs (same build line as offsets.c, with
   P=/root/.pyenv/versions/3.9.18 or 3.10.13). Printed on this machine (x86_64):
   field                                3.9.18  3.10.13
   runtime.interpreters.head                32       32
   interp.next / interp.tstate_head        0/8      0/8
   tstate.next / tstate.frame             8/24     8/24
   tstate.thread_id                        176      176
   frame.f_back / f_code                 24/32    24/32
   frame.f_lasti                           104       96
   code.co_firstlineno                      40       40
   code.co_filename / co_name          104/112  104/112
   code.co_lnotab / co_linetable           120      120
   bytes.ob_size / ob_sval               16/32    16/32
   unicode.length / state                16/32    16/32
   sizeof(PyASCIIObject) / Compact       48/72    48/72
   state masks: kind 0x1c, compact 0x20, ascii 0x40 (both) */
