/* Prints the offsets in offsets311.rs, offsets312.rs and offsets313.rs. For each version:
 *   gcc -w -I$P/include/python3.X -I$P/include/python3.X/internal offsets.c -o off && ./off
 * with P=/root/.pyenv/versions/3.X.Y (pyenv installs the internal headers). */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_frame.h"
#include "internal/pycore_code.h"
#include <stdio.h>
#define P(name, expr) printf("%-40s %zu\n", name, (size_t)(expr))
int main(void) {
  printf("PY_VERSION %s\n", PY_VERSION);
  P("runtime.interpreters.head", offsetof(_PyRuntimeState, interpreters.head));
  P("interp.next", offsetof(PyInterpreterState, next));
  P("interp.threads.head", offsetof(PyInterpreterState, threads.head));
  P("tstate.next", offsetof(PyThreadState, next));
  P("tstate.interp", offsetof(PyThreadState, interp));
  P("tstate.thread_id", offsetof(PyThreadState, thread_id));
  P("tstate.native_thread_id", offsetof(PyThreadState, native_thread_id));
#if PY_MINOR_VERSION < 13
  P("tstate.cframe", offsetof(PyThreadState, cframe));
  P("cframe.current_frame", offsetof(_PyCFrame, current_frame));
  P("frame.code(f_code)", offsetof(_PyInterpreterFrame, f_code));
  P("frame.instr(prev_instr)", offsetof(_PyInterpreterFrame, prev_instr));
#else
  P("tstate.current_frame", offsetof(PyThreadState, current_frame));
  P("frame.code(f_executable)", offsetof(_PyInterpreterFrame, f_executable));
  P("frame.instr(instr_ptr)", offsetof(_PyInterpreterFrame, instr_ptr));
#endif
  P("tstate.datastack_chunk", offsetof(PyThreadState, datastack_chunk));
  P("tstate.datastack_top", offsetof(PyThreadState, datastack_top));
  P("tstate.datastack_limit", offsetof(PyThreadState, datastack_limit));
  P("chunk.previous", offsetof(_PyStackChunk, previous));
  P("chunk.size", offsetof(_PyStackChunk, size));
  P("chunk.top", offsetof(_PyStackChunk, top));
  P("chunk.data", offsetof(_PyStackChunk, data));
  P("frame.previous", offsetof(_PyInterpreterFrame, previous));
  P("frame.owner", offsetof(_PyInterpreterFrame, owner));
  P("frame.localsplus", offsetof(_PyInterpreterFrame, localsplus));
  P("sizeof(frame)", sizeof(_PyInterpreterFrame));
  P("code.ob_type", offsetof(PyCodeObject, ob_base.ob_base.ob_type));
  P("code.ob_size", offsetof(PyCodeObject, ob_base.ob_size));
  P("code.co_firstlineno", offsetof(PyCodeObject, co_firstlineno));
  P("code.co_filename", offsetof(PyCodeObject, co_filename));
  P("code.co_name", offsetof(PyCodeObject, co_name));
  P("code.co_qualname", offsetof(PyCodeObject, co_qualname));
  P("code.co_linetable", offsetof(PyCodeObject, co_linetable));
  P("code._co_firsttraceable", offsetof(PyCodeObject, _co_firsttraceable));
  P("code.co_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
  P("bytes.ob_size", offsetof(PyBytesObject, ob_base.ob_size));
  P("bytes.ob_sval", offsetof(PyBytesObject, ob_sval));
  P("unicode.length", offsetof(PyASCIIObject, length));
  P("unicode.state", offsetof(PyASCIIObject, state));
  P("sizeof(PyASCIIObject)", sizeof(PyASCIIObject));
  P("sizeof(PyCompactUnicodeObject)", sizeof(PyCompactUnicodeObject));
  /* state bitfield: set kind/compact/ascii and print the raw word */
  PyASCIIObject a; memset(&a, 0, sizeof a);
  a.state.kind = 7; printf("state.kind mask %#x\n", *(unsigned int*)&a.state);
  memset(&a, 0, sizeof a); a.state.compact = 1; printf("state.compact mask %#x\n", *(unsigned int*)&a.state);
  memset(&a, 0, sizeof a); a.state.ascii = 1; printf("state.ascii mask %#x\n", *(unsigned int*)&a.state);
#if PY_MINOR_VERSION < 12
  memset(&a, 0, sizeof a); a.state.ready = 1; printf("state.ready mask %#x\n", *(unsigned int*)&a.state);
#endif
  return 0;
}

/* Printed on this machine (x86_64):
   field                                3.11.7   3.12.1   3.13.0
   runtime.interpreters.head                40       40      632
   interp.next                               0        0     7264
   interp.threads.head                      16       72     7344
   tstate.next                               8        8        8
   tstate.interp                            16       16       16
   tstate.thread_id                        152      136      152
   tstate.native_thread_id                 160      144      160
   tstate.cframe                            56       56        -
   cframe.current_frame                      8        0        -
   frame.code(f_code)                       32        0        -
   frame.instr(prev_instr)                  56       56        -
   tstate.datastack_chunk                  296      232      232
   tstate.datastack_top                    304      240      240
   tstate.datastack_limit                  312      248      248
   chunk.previous                            0        0        0
   chunk.size                                8        8        8
   chunk.top                                16       16       16
   chunk.data                               24       24       24
   frame.previous                           48        8        8
   frame.owner                              69       70       70
   frame.localsplus                         72       72       72
   sizeof(frame)                            80       80       80
   code.ob_type                              8        8        8
   code.ob_size                             16       16       16
   code.co_firstlineno                      72       68       68
   code.co_filename                        112      112      112
   code.co_name                            120      120      120
   code.co_qualname                        128      128      128
   code.co_linetable                       136      136      136
   code._co_firsttraceable                 168      176      184
   code.co_code_adaptive                   184      192      200
   bytes.ob_size                            16       16       16
   bytes.ob_sval                            32       32       32
   unicode.length                           16       16       16
   unicode.state                            32       32       32
   sizeof(PyASCIIObject)                    48       40       40
   sizeof(PyCompactUnicodeObject)           72       56       56
   state.kind mask                        0x1c     0x1c     0x1c
   state.compact mask                     0x20     0x20     0x20
   state.ascii mask                       0x40     0x40     0x40
   state.ready mask                       0x80        -        -
   tstate.current_frame                      -        -       72
   frame.code(f_executable)                  -        -        0
   frame.instr(instr_ptr)                    -        -       56
*/
