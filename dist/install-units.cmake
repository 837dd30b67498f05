# Runs at `cmake --install` time (so that --prefix and DESTDIR apply): writes the systemd
# units with the install prefix's paths. Set by the caller: TOKEND_SOURCE_DIR,
# TOKEND_BINDIR, TOKEND_DATADIR, TOKEND_DOCDIR, TOKEND_UNITDIR (each relative to the
# prefix, or absolute).
foreach(dir BINDIR DATADIR DOCDIR UNITDIR)
  if(IS_ABSOLUTE "${TOKEND_${dir}}")
    set(TOKEND_${dir}_FULL "${TOKEND_${dir}}")
  else()
    set(TOKEND_${dir}_FULL "${CMAKE_INSTALL_PREFIX}/${TOKEND_${dir}}")
  endif()
endforeach()
set(TOKEND_BINDIR "${TOKEND_BINDIR_FULL}")
set(TOKEND_DATADIR "${TOKEND_DATADIR_FULL}/tokend")
set(TOKEND_DOCDIR "${TOKEND_DOCDIR_FULL}")
set(TOKEND_SYSTEMD_UNIT_DIR "${TOKEND_UNITDIR_FULL}")
# tokend.service, and tokend@.service for several instances on one machine (tokend@8001
# listens on port 8001).
foreach(unit tokend tokend@)
  if(unit STREQUAL "tokend")
    set(TOKEND_UNIT_TITLE "")
    set(TOKEND_UNIT_PORT "")
    set(TOKEND_UNIT_EXAMPLE "tokend")
  else()
    set(TOKEND_UNIT_TITLE " (one of several: the instance name is its port)")
    set(TOKEND_UNIT_PORT " --port %i")
    set(TOKEND_UNIT_EXAMPLE "tokend@8001")
  endif()
  set(out "$ENV{DESTDIR}${TOKEND_SYSTEMD_UNIT_DIR}/${unit}.service")
  message(STATUS "Installing: ${out}")
  configure_file("${TOKEND_SOURCE_DIR}/dist/tokend.service.in" "${out}" @ONLY)
endforeach()
