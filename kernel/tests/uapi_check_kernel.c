// SPDX-License-Identifier: GPL-2.0
/*
 * The group uapi as the patched kernel's exported <linux/io_uring.h> defines it.
 * Linked into uapi_check with uapi_check_compat.cc, which has relay/uring_compat.h's view.
 */
#include <linux/io_uring.h>

#include "uapi_check.h"

const struct uapi_value uapi_kernel[] = {
	{ "IOSQE_GROUP_BIT", IOSQE_GROUP_BIT },
	{ "IOSQE_GROUP", IOSQE_GROUP },
	{ "IOSQE_GROUP_KBUF", IOSQE_GROUP_KBUF },
	{ "IORING_RECV_GROUP_KBUF", IORING_RECV_GROUP_KBUF },
	{ "IORING_GROUP_KBUF_MAX", IORING_GROUP_KBUF_MAX },
	{ "IORING_FEAT_SQE_GROUP", IORING_FEAT_SQE_GROUP },
	{ "IORING_FEAT_GROUP_KBUF", IORING_FEAT_GROUP_KBUF },
	{ 0, 0 },
};
