// io_uring ABI constants newer than Debian's liburing-dev 2.3 headers, and the uapi of
// grelay's own kernel series (kernel/patches). Values come from the kernel ABI
// (include/uapi/linux/io_uring.h); each is defined only if the system header lacks it.
#pragma once

#include <liburing.h>

// --- Mainline (upstream) ABI, newer than liburing 2.3 -----------------------------------

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)  // 6.0
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)  // 6.1
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)  // 6.6
#endif

#ifndef IORING_FEAT_REG_REG_RING
#define IORING_FEAT_REG_REG_RING (1U << 13)  // 6.3
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)  // 6.10
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)  // 6.12
#endif

#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)  // 6.10: send/recv several provided buffers at once
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)  // 6.12 incremental buffer consumption
#endif
#ifndef IORING_CQE_BUFFER_SHIFT
#define IORING_CQE_BUFFER_SHIFT 16
#endif

// Opcodes after IORING_OP_SENDMSG_ZC (48), for the feature probe's names only.
namespace grelay::uring_ops {
inline constexpr int kReadMultishot = 49;  // 6.7
inline constexpr int kBind = 56;           // 6.11
inline constexpr int kListen = 57;         // 6.11
}  // namespace grelay::uring_ops

// --- grelay's kernel series: SQE groups with a group kernel buffer -----------------------
//
// A group is a leader SQE followed by member SQEs, submitted together. IOSQE_GROUP is set
// on the leader and on every member but the last (the same convention as IOSQE_IO_LINK).
// Members are issued, concurrently, after the leader completes successfully; the leader's
// CQE is posted first. A leader that fails or returns 0 (EOF) completes every member
// with -ECANCELED. LINK, HARDLINK and DRAIN (except as IOSQE_GROUP_KBUF below) are
// rejected inside a group (-EINVAL).
//
// The group kernel buffer: a RECV leader with IORING_RECV_GROUP_KBUF in sqe->ioprio
// receives up to sqe->len bytes into freshly allocated kernel pages owned by the group
// (sqe->addr must be 0; no buffer select, no multishot). A member with IOSQE_GROUP_KBUF
// uses that buffer as its source: SEND (sqe->addr = offset into the buffer, sqe->len =
// bytes, 0 = the rest of the leader's result; pages go to TCP with MSG_SPLICE_PAGES) or
// WRITE (sqe->addr = offset into the buffer, sqe->len as for SEND, sqe->off = file offset).
// An offset or length outside the leader's result fails that member with -EINVAL. The
// buffer is freed when the last member completes. Outstanding group buffer bytes per ring
// are bounded; a leader over the bound fails with -ENOBUFS.

#ifndef IOSQE_GROUP_BIT
#define IOSQE_GROUP_BIT 7
#endif
#ifndef IOSQE_GROUP
#define IOSQE_GROUP (1U << IOSQE_GROUP_BIT)
#endif
// On a group member (never a leader), IOSQE_IO_DRAIN means "source = group buffer":
// draining is meaningless inside a group, so the bit is reused as the seed series did.
#ifndef IOSQE_GROUP_KBUF
#define IOSQE_GROUP_KBUF IOSQE_IO_DRAIN
#endif
#ifndef IORING_RECV_GROUP_KBUF
#define IORING_RECV_GROUP_KBUF (1U << 15)  // sqe->ioprio of a RECV group leader
#endif
#ifndef IORING_FEAT_SQE_GROUP
#define IORING_FEAT_SQE_GROUP (1U << 30)
#endif
#ifndef IORING_FEAT_GROUP_KBUF
#define IORING_FEAT_GROUP_KBUF (1U << 31)
#endif
// Largest sqe->len a group-kbuf RECV leader accepts.
#ifndef IORING_GROUP_KBUF_MAX
#define IORING_GROUP_KBUF_MAX (1U << 20)
#endif
