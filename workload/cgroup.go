package workload

import "strings"

// ParseCgroupPath extracts the container id and the Kubernetes pod UID
// from a cgroup v2 path, where its shape says so; either may be empty.
// Shapes understood (one segment each, the deepest match wins, so a
// container's own sub-cgroups still name it):
//
//   - systemd driver: "cri-containerd-<id>.scope", "crio-<id>.scope",
//     "docker-<id>.scope", "libpod-<id>.scope"; pods as
//     "kubepods-<qos>-pod<uid_with_underscores>.slice" or
//     "kubepods-pod<uid>.slice";
//   - cgroupfs driver: "/kubepods/<qos>/pod<uid>/<id>",
//     "/kubepods/pod<uid>/<id>", "/docker/<id>".
//
// A container id is 64 lowercase hex digits; a pod UID is a UUID in its
// canonical 8-4-4-4-12 form (underscores of systemd slices become dashes).
// "crio-conmon-<id>.scope" is CRI-O's monitor process, not the container,
// and yields no container id.
func ParseCgroupPath(path string) (containerID, podUID string) {
	for seg := range strings.SplitSeq(path, "/") {
		if seg == "" {
			continue
		}
		if id := containerSegment(seg); id != "" {
			containerID = id
			continue
		}
		if uid := podSegment(seg); uid != "" {
			podUID = uid
		}
	}
	return containerID, podUID
}

var scopePrefixes = []string{"cri-containerd-", "crio-", "docker-", "libpod-"}

func containerSegment(seg string) string {
	if base, ok := strings.CutSuffix(seg, ".scope"); ok {
		for _, p := range scopePrefixes {
			if id, ok := strings.CutPrefix(base, p); ok && isContainerID(id) {
				return id
			}
		}
		return ""
	}
	// cgroupfs: the bare id under /kubepods/…/pod<uid>/ or /docker/.
	if isContainerID(seg) {
		return seg
	}
	return ""
}

func podSegment(seg string) string {
	if base, ok := strings.CutSuffix(seg, ".slice"); ok {
		// kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice
		i := strings.LastIndex(base, "-pod")
		if i < 0 || !strings.HasPrefix(base, "kubepods") {
			return ""
		}
		uid := strings.ReplaceAll(base[i+len("-pod"):], "_", "-")
		if isUUID(uid) {
			return uid
		}
		return ""
	}
	if uid, ok := strings.CutPrefix(seg, "pod"); ok && isUUID(uid) {
		return uid
	}
	return ""
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLowerHex(s[i]) {
			return false
		}
	}
	return true
}

// isUUID accepts the canonical 8-4-4-4-12 form, lowercase hex.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isLowerHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isLowerHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }
