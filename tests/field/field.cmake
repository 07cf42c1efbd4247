# tests/field/field.cmake — the field app's JS CRDT (clients/field/src/crdt.js)
# against the C one, included from the top-level CMakeLists.txt.
#   field_gen_records  C generator of random histories merged by crdt/record.c
#                      (tests/field/gen_records.c; usage in its header)
#   field_crdt         Node replays every history in several orders and must
#                      reach the C record bytes exactly; also the decoders'
#                      verdicts on corrupted bytes and the golden delta vectors.
# DOORSTEP_SEED=N replays a run (the seed is printed).
add_executable(field_gen_records ${CMAKE_SOURCE_DIR}/tests/field/gen_records.c
               ${CMAKE_SOURCE_DIR}/tests/common/testutil.c)
target_include_directories(field_gen_records PRIVATE ${CMAKE_SOURCE_DIR}/tests/common)
target_compile_definitions(field_gen_records PRIVATE DOORSTEP_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
target_link_libraries(field_gen_records PRIVATE doorstep_wire doorstep_crdt)

find_program(DOORSTEP_NODE node)
if(DOORSTEP_NODE)
  add_test(NAME field_crdt
           COMMAND ${DOORSTEP_NODE} ${CMAKE_SOURCE_DIR}/tests/field/crdt_test.mjs
                   $<TARGET_FILE:field_gen_records> ${CMAKE_SOURCE_DIR}/tests/vectors/deltas.txt
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
else()
  add_test(NAME field_crdt
           COMMAND sh -c "echo 'node not found: run scripts/install-deps' >&2; exit 1")
endif()
set_tests_properties(field_crdt PROPERTIES TIMEOUT 300)
