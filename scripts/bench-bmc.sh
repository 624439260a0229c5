# Sourced by scripts/bench-apps and scripts/bench-redfish (not run on its own): the STAND-IN
# BMC (Tests/StandIns/redfish/redfish_standin.py serving Tests/Fixtures/redfish/rackmount over
# HTTPS, session auth) with a throwaway CA, in "$work". Sets bmc_pid, bmc_port, bmc_redfish
# (a detector.redfish section polling it every 60 s); bmc_gets prints the GETs it served.
start_standin_bmc() {
  (
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=bench CA' -keyout ca.key -out ca.crt
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=localhost' -keyout bmc.key -out bmc.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext.cnf
    openssl x509 -req -in bmc.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out bmc.crt
  ) 2>/dev/null
  printf 'bmc-admin:bench-secret\n' >"$work/bmc-credentials"
  python3 "$root/Tests/StandIns/redfish/redfish_standin.py" --mockup "$root/Tests/Fixtures/redfish/rackmount" --port-file "$work/bmc-port" \
    --cert "$work/bmc.crt" --key "$work/bmc.key" --user bmc-admin --password bench-secret >"$work/bmc.log" 2>&1 &
  bmc_pid=$!
  for _ in $(seq 100); do [ -s "$work/bmc-port" ] && break; sleep 0.1; done
  bmc_port=$(cat "$work/bmc-port")
  bmc_redfish="\"redfish\": {\"url\": \"https://127.0.0.1:$bmc_port\", \"ca_file\": \"$work/ca.crt\", \"credentials_file\": \"$work/bmc-credentials\", \"poll_seconds\": 60}"
}
bmc_gets() {
  python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if r["method"]=="GET"))' \
    < <(curl -s --cacert "$work/ca.crt" "https://127.0.0.1:$bmc_port/_standin/requests")
}
