NAME = "next-to-script"
