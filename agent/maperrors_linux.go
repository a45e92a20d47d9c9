package agent

import "github.com/sluicehq/sluice/bpf"

// mapErrorSites names each enum map_error_site of sluice.c, the label value
// of sluice_bpf_map_update_errors_total: the map whose update failed.
// TestMapErrorSitesCoverBTF fails when sluice.c gains a site without one.
var mapErrorSites = map[bpf.SluiceMapErrorSite]string{
	bpf.SluiceMapErrorSiteMAP_ERR_ORIGINS:      "sluice_origins",
	bpf.SluiceMapErrorSiteMAP_ERR_PEERS:        "sluice_peers",
	bpf.SluiceMapErrorSiteMAP_ERR_DNS_PEERS:    "sluice_dns_peers",
	bpf.SluiceMapErrorSiteMAP_ERR_ORIGIN_SLOTS: "sluice_origin_slots",
}

// MapErrors returns how many map updates have failed in the kernel programs
// since they were loaded, summed over CPUs, by the name of the map (every
// site is present, at zero too). A failed sluice_origins update refuses the
// connect (reason no_intercept_address); a failed sluice_peers update leaves
// the proxy without the connection's origin; a failed sluice_origin_slots
// claim (every slot the cookie may use held) costs the connect a
// sluice_origins update instead. It is safe for concurrent use;
// after Close it returns zeros.
func (a *Agent) MapErrors() map[string]uint64 {
	out := make(map[string]uint64, len(mapErrorSites))
	for site, name := range mapErrorSites {
		out[name] = 0
		var vals []uint64
		if a.objs.SluiceMapErrors == nil {
			continue
		}
		if err := a.objs.SluiceMapErrors.Lookup(uint32(site), &vals); err != nil {
			continue
		}
		for _, v := range vals {
			out[name] += v
		}
	}
	return out
}
